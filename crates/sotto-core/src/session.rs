//! Sessions: how the helper's correlated randomness reaches the servers, and how servers open
//! values to each other.
//!
//! A session (one prediction, or one model load) starts with the helper drawing two fresh
//! 32-byte seeds `k0`, `k1` from the OS and sending `k_i` to server `P_i`. Every protocol is a
//! *gate*; the helper and both servers run the same sequence of gates, so they number them
//! alike. Inside a gate:
//!
//! - a **random** tensor `r` is `PRG(k0) + PRG(k1)`: each server expands its own part and
//!   nothing is sent;
//! - a **dealt value** `v` (such as `A·B` or `msb(r)`) is shared as `v0 = PRG(k0)` for P0 and
//!   `v1 = v - v0`, which the helper sends to P1: only P1 receives elements;
//! - **DCF keys** cannot be compressed into seeds, so both servers receive their key.
//!
//! The helper sends each server one message per gate (tag step `gate << 8`), before the gate's
//! online part; servers open values to each other with tag steps `gate << 8 | k`, `k >= 1`.
//!
//! **Streamed sessions** ([`Dealer::start_streamed`]) bound what a session's material can make
//! a server hold: each server acknowledges every gate's message when it takes it (an empty
//! message to the helper, tag step `gate << 8`), and the helper sends the next gate only while
//! the gates sent and not yet acknowledged by both servers weigh at most the session's window
//! (one gate larger than the window is still sent whole). A server learns that its session
//! is streamed from the seed message (33 bytes instead of 32).

use crate::dcf::DcfKeys;
use crate::dcf_bit::BitKeys;
use crate::error::{CoreError, Result};
use crate::prg::{Prg, Seed};
use crate::ring;
use crate::share;
use crate::transport::{PartyId, Tag, Transport};

/// Tag step of the client's input messages.
pub const INPUT_STEP: u32 = u32::MAX - 1;
/// Tag step of the servers' output messages.
pub const OUTPUT_STEP: u32 = u32::MAX;

/// Client side: shares an encoded input with a fresh OS seed and sends `x - PRG(s)` to P0 and
/// `s` to P1.
pub async fn client_send_input<T: Transport>(t: &T, session: u128, x: &[u64]) -> Result<()> {
    let sh = share::share_input(x)?;
    let tag = Tag {
        session,
        step: INPUT_STEP,
    };
    t.send(PartyId::P0, tag, ring::to_le_bytes(&sh.to_p0))
        .await?;
    t.send(PartyId::P1, tag, sh.to_p1.0.to_vec()).await
}

/// Client side, for a deployment that enforces the input's range on `k` bits: shares the
/// `k`-bit codes of `x` ([`share::share_input_bits`]) and sends P0 its words, P1 the seed.
pub async fn client_send_input_bits<T: Transport>(
    t: &T,
    session: u128,
    x: &[u64],
    k: u32,
) -> Result<()> {
    let (to_p0, seed) = share::share_input_bits(x, k)?;
    let tag = Tag {
        session,
        step: INPUT_STEP,
    };
    t.send(PartyId::P0, tag, to_p0).await?;
    t.send(PartyId::P1, tag, seed.0.to_vec()).await
}

/// Client side: receives both output shares of `n` elements and adds them (modulo
/// `2^modulus_bits` when it is below 64, as for argmax labels).
pub async fn client_receive_output<T: Transport>(
    t: &T,
    session: u128,
    n: usize,
    modulus_bits: u32,
) -> Result<Vec<u64>> {
    let tag = Tag {
        session,
        step: OUTPUT_STEP,
    };
    let a = ring::from_le_bytes(&t.recv(PartyId::P0, tag).await?, n)?;
    let b = ring::from_le_bytes(&t.recv(PartyId::P1, tag).await?, n)?;
    let mut y = ring::add(&a, &b)?;
    if modulus_bits < 64 {
        for v in y.iter_mut() {
            *v &= (1u64 << modulus_bits) - 1;
        }
    }
    Ok(y)
}

/// Most rounds (openings) one gate may use.
const MAX_SUBSTEPS: u32 = 255;

/// Largest message of a gate's material: a larger one is sent in parts (tag steps
/// `gate << 8 | k`, each part's first byte saying whether another follows), so that no
/// message exceeds what a link carries, and none costs its writer much to send: the
/// WebSocket writer moves what follows each write of a message's frame to the front of its
/// buffer, so the copying per message grows with its size squared (parts of 256 MiB made
/// memory moves three quarters of the helper's time on ResNet-50). A gate holds at most
/// 256 parts: 8 GiB.
pub const MATERIAL_PART: usize = 32 << 20;

fn stream_id(gate: u32, counter: u32) -> u64 {
    (u64::from(gate) << 32) | u64::from(counter)
}

fn tag(session: u128, gate: u32, sub: u32) -> Tag {
    Tag {
        session,
        step: (gate << 8) | sub,
    }
}

/// A server's (P0's or P1's) side of a session.
pub struct Server<T> {
    t: T,
    me: PartyId,
    peer: PartyId,
    session: u128,
    seed: Seed,
    gate: u32,
    /// A streamed session: every gate's material is acknowledged to the helper.
    streamed: bool,
}

impl<T> std::fmt::Debug for Server<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Server({:?}, session {:x}, gate {})",
            self.me, self.session, self.gate
        )
    }
}

impl<T: Transport> Server<T> {
    /// Joins session `session`: waits for this server's seed from the helper.
    pub async fn start(t: T, session: u128) -> Result<Self> {
        let me = t.id();
        let peer = me.peer()?;
        let bytes = t.recv(PartyId::Helper, tag(session, 0, 0)).await?;
        let (seed, streamed) = match bytes.len() {
            32 => (Seed::from_bytes(&bytes)?, false),
            33 if bytes[32] == 1 => (Seed::from_bytes(&bytes[..32])?, true),
            n => {
                return Err(CoreError::decode(
                    "session seed",
                    format!("{n} bytes (32, or 33 for a streamed session)"),
                ))
            }
        };
        Ok(Server {
            t,
            me,
            peer,
            session,
            seed,
            gate: 0,
            streamed,
        })
    }

    /// True when the helper streams this session's material (see the module docs): it is
    /// then best consumed as the steps run, not prepared ahead.
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }

    /// This server's id (P0 or P1).
    pub fn id(&self) -> PartyId {
        self.me
    }

    /// True for P0, the server that adds public constants.
    pub fn is_p0(&self) -> bool {
        self.me == PartyId::P0
    }

    /// The session id.
    pub fn session(&self) -> u128 {
        self.session
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    /// Starts the next gate: receives this server's material from the helper.
    pub(crate) async fn gate(&mut self) -> Result<ServerGate<'_, T>> {
        self.gate = self
            .gate
            .checked_add(1)
            .filter(|g| *g < (1 << 24))
            .ok_or_else(|| CoreError::Protocol("too many gates in one session".into()))?;
        let mut msg = Vec::new();
        for part in 0..=MAX_SUBSTEPS {
            let mut m = self
                .t
                .recv(PartyId::Helper, tag(self.session, self.gate, part))
                .await?;
            let more = match m.first() {
                Some(0) => false,
                Some(1) => true,
                _ => {
                    return Err(CoreError::decode(
                        "helper material",
                        "a part without its continuation flag",
                    ))
                }
            };
            // The first part is kept whole (the gate reads from after its flag byte).
            if part == 0 {
                msg = std::mem::take(&mut m);
            } else {
                msg.extend_from_slice(&m[1..]);
            }
            if !more {
                break;
            }
            if part == MAX_SUBSTEPS {
                return Err(CoreError::decode(
                    "helper material",
                    "more parts than a gate may have",
                ));
            }
        }
        if self.streamed {
            self.t
                .send(PartyId::Helper, tag(self.session, self.gate, 0), Vec::new())
                .await?;
        }
        Ok(ServerGate {
            gate: self.gate,
            s: self,
            msg,
            pos: 1,
            counter: 0,
            sub: 0,
        })
    }

    /// The client's input message (tag step [`INPUT_STEP`]), as sent.
    async fn recv_input(&self) -> Result<Vec<u8>> {
        self.t
            .recv(
                PartyId::Client,
                Tag {
                    session: self.session,
                    step: INPUT_STEP,
                },
            )
            .await
    }

    /// Receives the client's input of `n` elements (tag step [`INPUT_STEP`]): P0 gets the full
    /// share `x - PRG(s)`, P1 only the 32-byte seed `s`, which it expands.
    pub async fn receive_input(&self, n: usize) -> Result<Vec<u64>> {
        let bytes = self.recv_input().await?;
        if self.is_p0() {
            ring::from_le_bytes(&bytes, n)
        } else {
            Ok(share::expand_seed(&Seed::from_bytes(&bytes)?, n))
        }
    }

    /// Receives the client's input of `n` elements shared for a `k`-bit range (tag step
    /// [`INPUT_STEP`], [`share::share_input_bits`]): P0 gets its words ([`share::decode_bits`]:
    /// exactly `n`, none above `k + 1` bits), P1 the seed, which it expands
    /// ([`share::expand_seed_bits`]). The words are what [`crate::protocols::finish_lift`]
    /// takes.
    pub async fn receive_input_bits(&self, n: usize, k: u32) -> Result<Vec<u64>> {
        crate::protocols::check_lift(k)?;
        let bytes = self.recv_input().await?;
        if self.is_p0() {
            share::decode_bits(&bytes, n, k)
        } else {
            Ok(share::expand_seed_bits(&Seed::from_bytes(&bytes)?, n, k))
        }
    }

    /// Sends this server's share of an output to the client (tag step [`OUTPUT_STEP`]).
    pub async fn send_output(&self, share: &[u64]) -> Result<()> {
        self.t
            .send(
                PartyId::Client,
                Tag {
                    session: self.session,
                    step: OUTPUT_STEP,
                },
                ring::to_le_bytes(share),
            )
            .await
    }
}

/// One gate on a server: reads the helper's material and opens values with the peer.
pub(crate) struct ServerGate<'a, T> {
    s: &'a Server<T>,
    gate: u32,
    msg: Vec<u8>,
    pos: usize,
    counter: u32,
    sub: u32,
}

impl<T: Transport> ServerGate<'_, T> {
    fn next_prg(&mut self) -> Prg {
        let p = Prg::new(&self.s.seed, stream_id(self.gate, self.counter));
        self.counter += 1;
        p
    }

    /// This server's part of a random tensor of `n` elements.
    pub(crate) fn random(&mut self, n: usize) -> Vec<u64> {
        self.next_prg().vec_u64(n)
    }

    /// This server's share of a dealt value of `n` elements.
    pub(crate) fn value(&mut self, n: usize) -> Result<Vec<u64>> {
        let mut prg = self.next_prg();
        if self.s.is_p0() {
            Ok(prg.vec_u64(n))
        } else {
            let bytes = self.take(
                n.checked_mul(8)
                    .ok_or_else(|| CoreError::Param("dealt value too large".into()))?,
            )?;
            ring::from_le_bytes(bytes, n)
        }
    }

    /// This server's DCF keys.
    pub(crate) fn keys(&mut self) -> Result<DcfKeys> {
        let len_bytes = self.take(4)?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let bytes = self.take(len)?;
        let keys = DcfKeys::from_bytes(bytes)?;
        if u64::from(keys.party()) != self.s.me.index() as u64 {
            return Err(CoreError::Protocol("DCF keys for the other server".into()));
        }
        Ok(keys)
    }

    /// This server's XOR share of a random bit vector of `n` bits (0 or 1 each) whose shares
    /// both servers expand from their seeds: nothing is sent.
    pub(crate) fn random_bits(&mut self, n: usize) -> Vec<u8> {
        random_bits_of(&mut self.next_prg(), n)
    }

    /// This server's one-bit DCF keys ([`crate::dcf_bit`]).
    pub(crate) fn bit_keys(&mut self) -> Result<BitKeys> {
        let len_bytes = self.take(4)?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let bytes = self.take(len)?;
        let keys = BitKeys::from_bytes(bytes)?;
        if u64::from(keys.party()) != self.s.me.index() as u64 {
            return Err(CoreError::Protocol(
                "one-bit DCF keys for the other server".into(),
            ));
        }
        Ok(keys)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.msg.len())
            .ok_or_else(|| {
                CoreError::decode("helper material", "message is shorter than the gate needs")
            })?;
        let out = &self.msg[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Opens a shared vector: sends this share to the peer, receives the peer's, adds them.
    /// One round, `8 · x.len()` bytes sent.
    pub(crate) async fn open(&mut self, x: &[u64]) -> Result<Vec<u64>> {
        self.sub += 1;
        self.s.open_at(self.gate, self.sub, x).await
    }

    /// Ends the material part of the gate and keeps what its online part needs, so that the
    /// gate's openings can run later (see [`Deferred`]).
    pub(crate) fn defer(self) -> Result<Deferred> {
        let d = Deferred {
            session: self.s.session,
            gate: self.gate,
            sub: self.sub,
        };
        self.finish()?;
        Ok(d)
    }

    /// Ends the gate; the helper's message must have been used up exactly.
    pub(crate) fn finish(self) -> Result<()> {
        if self.pos != self.msg.len() {
            return Err(CoreError::decode(
                "helper material",
                format!("{} unexpected trailing bytes", self.msg.len() - self.pos),
            ));
        }
        Ok(())
    }
}

/// A gate whose material was received and preprocessed before its input was known; its
/// openings run later with [`Server::open_deferred`].
#[derive(Debug)]
pub struct Deferred {
    session: u128,
    gate: u32,
    sub: u32,
}

impl<T: Transport> Server<T> {
    /// Opens `x` in a deferred gate's next round.
    pub(crate) async fn open_deferred(&self, d: &mut Deferred, x: &[u64]) -> Result<Vec<u64>> {
        if d.session != self.session {
            return Err(CoreError::Protocol(
                "prepared material of another session".into(),
            ));
        }
        d.sub += 1;
        self.open_at(d.gate, d.sub, x).await
    }

    /// Opens a XOR-shared bit vector (each element 0 or 1) in a deferred gate's next round:
    /// sends this share packed 8 bits to a byte (`⌈n/8⌉` bytes, bit `i % 8` of byte `i / 8`,
    /// the padding bits 0), receives the peer's, and returns the XOR, one bit per element.
    /// The peer's message must have exactly that length and zero padding.
    pub(crate) async fn open_bits_deferred(
        &self,
        d: &mut Deferred,
        bits: &[u8],
    ) -> Result<Vec<u8>> {
        if d.session != self.session {
            return Err(CoreError::Protocol(
                "prepared material of another session".into(),
            ));
        }
        d.sub += 1;
        if d.sub > MAX_SUBSTEPS {
            return Err(CoreError::Protocol("too many rounds in one gate".into()));
        }
        let t = tag(self.session, d.gate, d.sub);
        self.t.send(self.peer, t, pack_bits(bits)).await?;
        let theirs = self.t.recv(self.peer, t).await?;
        let mut out = unpack_bits(&theirs, bits.len()).ok_or_else(|| {
            CoreError::Protocol(format!(
                "peer opened {} bytes of bits where {} (with zero padding) were expected",
                theirs.len(),
                bits.len().div_ceil(8)
            ))
        })?;
        for (o, b) in out.iter_mut().zip(bits) {
            *o ^= b & 1;
        }
        Ok(out)
    }

    async fn open_at(&self, gate: u32, sub: u32, x: &[u64]) -> Result<Vec<u64>> {
        if sub > MAX_SUBSTEPS {
            return Err(CoreError::Protocol("too many rounds in one gate".into()));
        }
        let t = tag(self.session, gate, sub);
        self.t.send(self.peer, t, ring::to_le_bytes(x)).await?;
        let theirs = self.t.recv(self.peer, t).await?;
        let theirs = ring::from_le_bytes(&theirs, x.len()).map_err(|_| {
            CoreError::Protocol(format!(
                "peer opened {} bytes where {} were expected",
                theirs.len(),
                8 * x.len()
            ))
        })?;
        ring::add(x, &theirs)
    }
}

/// `n` bits (0 or 1) from a seeded stream: the low bit of each of `n` bytes.
fn random_bits_of(prg: &mut Prg, n: usize) -> Vec<u8> {
    use rand_core::RngCore;
    let mut b = vec![0u8; n];
    prg.fill_bytes(&mut b);
    for x in b.iter_mut() {
        *x &= 1;
    }
    b
}

/// Packs bits (the low bit of each byte) 8 to a byte: bit `i % 8` of byte `i / 8`.
pub(crate) fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (o, chunk) in out.iter_mut().zip(bits.chunks(8)) {
        for (j, b) in chunk.iter().enumerate() {
            *o |= (b & 1) << j;
        }
    }
    out
}

/// Unpacks `n` bits packed by [`pack_bits`]; `None` unless `bytes` has exactly `⌈n/8⌉` bytes
/// and its padding bits are zero.
pub(crate) fn unpack_bits(bytes: &[u8], n: usize) -> Option<Vec<u8>> {
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    if !n.is_multiple_of(8) && bytes[n / 8] >> (n % 8) != 0 {
        return None;
    }
    Some((0..n).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect())
}

/// The helper's side of a session.
pub struct Dealer<T> {
    t: T,
    session: u128,
    seeds: [Seed; 2],
    rng: Prg,
    gate: u32,
    /// Streamed sessions: the window, and the gates sent but not acknowledged by both
    /// servers (gate, bytes of its larger message) with their total.
    window: Option<usize>,
    unacked: std::collections::VecDeque<(u32, usize)>,
    unacked_bytes: usize,
    peak_unacked: usize,
    /// Largest part of a gate's material message.
    part: usize,
}

impl<T> std::fmt::Debug for Dealer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dealer(session {:x}, gate {})", self.session, self.gate)
    }
}

impl<T: Transport> Dealer<T> {
    /// Starts session `session`: draws fresh seeds from the OS and sends one to each server.
    pub async fn start(t: T, session: u128) -> Result<Self> {
        Self::begin(t, session, None).await
    }

    /// Starts a streamed session (see the module docs): at most about `window` bytes of
    /// material per server sent ahead of what the servers have taken.
    pub async fn start_streamed(t: T, session: u128, window: usize) -> Result<Self> {
        Self::begin(t, session, Some(window)).await
    }

    async fn begin(t: T, session: u128, window: Option<usize>) -> Result<Self> {
        let seeds = [Seed::random()?, Seed::random()?];
        let rng = Prg::from_os()?;
        for (p, s) in [PartyId::P0, PartyId::P1].iter().zip(&seeds) {
            let mut msg = s.0.to_vec();
            if window.is_some() {
                msg.push(1);
            }
            t.send(*p, tag(session, 0, 0), msg).await?;
        }
        Ok(Dealer {
            t,
            session,
            seeds,
            rng,
            gate: 0,
            window,
            unacked: Default::default(),
            unacked_bytes: 0,
            peak_unacked: 0,
            part: MATERIAL_PART,
        })
    }

    /// Sends each gate's material in parts of at most `bytes` (default [`MATERIAL_PART`]);
    /// the servers need not know the size. For tests of the parts themselves.
    pub fn set_material_part(&mut self, bytes: usize) {
        self.part = bytes.max(1);
    }

    /// Streamed sessions: waits until both servers have taken every gate sent (the last
    /// acknowledgements are collected, not left queued); at once for other sessions.
    pub async fn drain(&mut self) -> Result<()> {
        while self.take_ack().await? {}
        Ok(())
    }

    /// Waits for both servers' acknowledgement of the oldest gate not acknowledged; false
    /// when there is none.
    async fn take_ack(&mut self) -> Result<bool> {
        let Some((gate, b)) = self.unacked.pop_front() else {
            return Ok(false);
        };
        for p in [PartyId::P0, PartyId::P1] {
            let ack = self.t.recv(p, tag(self.session, gate, 0)).await?;
            if !ack.is_empty() {
                return Err(CoreError::Protocol(format!(
                    "{p:?} sent {} bytes where a gate's acknowledgement is empty",
                    ack.len()
                )));
            }
        }
        self.unacked_bytes -= b;
        Ok(true)
    }

    /// Streamed sessions: the most bytes (of the larger of the two servers' messages) that
    /// were sent and not yet acknowledged at once, the gate just sent included.
    pub fn peak_unacknowledged(&self) -> usize {
        self.peak_unacked
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.t
    }

    pub(crate) fn gate(&mut self) -> Result<DealerGate<'_, T>> {
        self.gate = self
            .gate
            .checked_add(1)
            .filter(|g| *g < (1 << 24))
            .ok_or_else(|| CoreError::Protocol("too many gates in one session".into()))?;
        Ok(DealerGate {
            d: self,
            // Each message starts with its part's continuation flag (see `finish`).
            msgs: [vec![0], vec![0]],
            counter: 0,
        })
    }
}

/// One gate on the helper: collects each server's material, then sends it.
pub(crate) struct DealerGate<'a, T> {
    d: &'a mut Dealer<T>,
    msgs: [Vec<u8>; 2],
    counter: u32,
}

impl<T: Transport> DealerGate<'_, T> {
    fn next_prgs(&mut self) -> [Prg; 2] {
        let id = stream_id(self.d.gate, self.counter);
        self.counter += 1;
        [
            Prg::new(&self.d.seeds[0], id),
            Prg::new(&self.d.seeds[1], id),
        ]
    }

    /// A random tensor `r = r0 + r1` whose parts the servers expand from their seeds.
    pub(crate) fn random(&mut self, n: usize) -> Vec<u64> {
        let [mut p0, mut p1] = self.next_prgs();
        let mut r = p0.vec_u64(n);
        let r1 = p1.vec_u64(n);
        for (a, b) in r.iter_mut().zip(&r1) {
            *a = a.wrapping_add(*b);
        }
        r
    }

    /// Deals `v`: P0's share comes from its seed, P1 receives `v - v0`.
    pub(crate) fn value(&mut self, v: &[u64]) {
        let [mut p0, _] = self.next_prgs();
        let v0 = p0.vec_u64(v.len());
        self.msgs[1].reserve(8 * v.len());
        for (a, b) in v.iter().zip(&v0) {
            self.msgs[1].extend_from_slice(&a.wrapping_sub(*b).to_le_bytes());
        }
    }

    /// A random bit vector `b = b0 ⊕ b1` (0 or 1 each) whose shares the servers expand from
    /// their seeds ([`ServerGate::random_bits`]); nothing is sent.
    pub(crate) fn random_bits(&mut self, n: usize) -> Vec<u8> {
        let [mut p0, mut p1] = self.next_prgs();
        let mut b = random_bits_of(&mut p0, n);
        for (x, y) in b.iter_mut().zip(random_bits_of(&mut p1, n)) {
            *x ^= y;
        }
        b
    }

    /// Deals a pair of comparison keys that `gen` (`dcf::gen_into` or `dcf_bit::gen_into`,
    /// with the helper's generator) writes straight into the two servers' messages, party 0's
    /// encoding to the first and party 1's to the second, each after its length (4 bytes,
    /// little-endian) as [`ServerGate::keys`] and [`ServerGate::bit_keys`] read them. No key
    /// gets a buffer of its own. On an error nothing is added to either message.
    pub(crate) fn keys_into(
        &mut self,
        gen: impl FnOnce(&mut Prg, &mut Vec<u8>, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let rng = &mut self.d.rng;
        let [m0, m1] = &mut self.msgs;
        let (at0, at1) = (m0.len(), m1.len());
        m0.extend_from_slice(&[0; 4]);
        m1.extend_from_slice(&[0; 4]);
        if let Err(e) = gen(rng, m0, m1) {
            m0.truncate(at0);
            m1.truncate(at1);
            return Err(e);
        }
        for (m, at) in [(m0, at0), (m1, at1)] {
            let len = u32::try_from(m.len() - at - 4)
                .map_err(|_| CoreError::Param("comparison keys over 4 GiB".into()))?;
            m[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Ok(())
    }

    /// Sends the gate's material to both servers.
    pub(crate) async fn finish(self) -> Result<()> {
        let [m0, m1] = self.msgs;
        let longest = m0.len().max(m1.len()) - 1;
        let size = self.d.part;
        if longest.div_ceil(size) > MAX_SUBSTEPS as usize + 1 {
            return Err(CoreError::Param(format!(
                "{longest} bytes of material in one gate: more than {} parts of {size}",
                MAX_SUBSTEPS + 1
            )));
        }
        for (p, m) in [(PartyId::P0, m0), (PartyId::P1, m1)] {
            let body = m.len() - 1;
            if body <= size {
                // One part: the message as built, its flag byte 0 (no part follows).
                self.d
                    .t
                    .send(p, tag(self.d.session, self.d.gate, 0), m)
                    .await?;
                continue;
            }
            let parts = body.div_ceil(size);
            let m = &m[1..];
            for k in 0..parts {
                let chunk = &m[k * size..((k + 1) * size).min(body)];
                let mut msg = Vec::with_capacity(chunk.len() + 1);
                msg.push(u8::from(k + 1 < parts));
                msg.extend_from_slice(chunk);
                self.d
                    .t
                    .send(p, tag(self.d.session, self.d.gate, k as u32), msg)
                    .await?;
            }
        }
        let Some(window) = self.d.window else {
            return Ok(());
        };
        let d = self.d;
        d.unacked.push_back((d.gate, longest));
        d.unacked_bytes += longest;
        d.peak_unacked = d.peak_unacked.max(d.unacked_bytes);
        // Back-pressure: the next gate waits until the servers have taken enough.
        while d.unacked_bytes > window && d.take_ack().await? {}
        Ok(())
    }
}

#[cfg(test)]
mod bit_tests {
    use super::{pack_bits, unpack_bits};

    #[test]
    fn packed_bits_round_trip_and_bad_lengths_or_padding_are_refused() {
        for n in [0usize, 1, 7, 8, 9, 64, 1001] {
            let bits: Vec<u8> = (0..n).map(|i| ((i * 7 + i / 3) % 2) as u8).collect();
            let packed = pack_bits(&bits);
            assert_eq!(packed.len(), n.div_ceil(8));
            assert_eq!(unpack_bits(&packed, n), Some(bits));
            let mut long = packed.clone();
            long.push(0);
            assert_eq!(unpack_bits(&long, n), None);
            if n % 8 != 0 {
                let mut pad = packed.clone();
                pad[n / 8] |= 0x80;
                assert_eq!(unpack_bits(&pad, n), None, "padding bit set");
            }
            if n > 0 {
                assert_eq!(unpack_bits(&packed[1..], n), None);
            }
        }
        // only the low bit of each input byte is packed
        assert_eq!(pack_bits(&[3, 2, 1]), vec![0b101]);
    }
}
