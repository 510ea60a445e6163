//! The parties' coordination: links, model loads, the pools of dealt sessions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_core::local::{block_on, new_session_id};
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::{PartyId, Tag, Transport};
use sotto_model::private::{deal_load, deal_predict, load};
use sotto_net::auth;
use sotto_net::{party_ws_config, ControlReceiver, Duplex};
use sotto_wire::{Control, Role};
use tokio::sync::{mpsc, oneshot};

use super::error::Result;
use super::State;

/// How long a party waits for a handshake message.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long P0 waits for the helper to deal a session it asked for.
pub const DEAL_WAIT: Duration = Duration::from_secs(30);

/// Dealt sessions waiting to be used.
#[derive(Default)]
pub struct Pools {
    /// P0: by (model, batch).
    queues: HashMap<(String, usize), Queue>,
    /// P1: session → (model, batch).
    ready: HashMap<u128, (String, usize)>,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<u128>,
    /// Sessions asked of the helper and not announced yet.
    requested: usize,
    /// When the helper last made progress on this queue (an ask sent while none was
    /// outstanding, or an announcement): see [`LOST_DEALS`].
    progress: Option<Instant>,
    waiters: VecDeque<oneshot::Sender<u128>>,
}

/// P0 counts sessions asked of the helper and not yet announced, and asks only for what
/// that count leaves missing. A helper that gives up on a queue (a deal that failed under
/// load, a restart) does not say so; if it announces nothing for a queue with sessions
/// outstanding for this long, P0 forgets them and asks again. Without this a pool stayed
/// below its size for good (seen once under heavy load: a benchmark waited out its five
/// minutes for a pool that never filled, every request dealt on demand).
const LOST_DEALS: Duration = DEAL_WAIT;

fn role_of(p: PartyId) -> Role {
    match p {
        PartyId::P0 => Role::P0,
        PartyId::P1 => Role::P1,
        PartyId::Helper => Role::Helper,
        PartyId::Client => Role::Client,
    }
}

fn party_of(r: Role) -> PartyId {
    match r {
        Role::P0 => PartyId::P0,
        Role::P1 => PartyId::P1,
        Role::Helper => PartyId::Helper,
        Role::Client => PartyId::Client,
    }
}

fn hex(v: u128) -> String {
    format!("{v:032x}")
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions ready in the pools.
pub fn pool_size(st: &State) -> usize {
    let pools = lock(&st.pools);
    pools.ready.len() + pools.queues.values().map(|q| q.ready.len()).sum::<usize>()
}

/// P0: sessions asked of the helper and not yet announced ready.
pub fn dealing(st: &State) -> usize {
    lock(&st.pools).queues.values().map(|q| q.requested).sum()
}

/// Starts the party's background work: dialing, the control loop, loads and pools.
pub fn start(st: Arc<State>, control: ControlReceiver) -> std::result::Result<(), String> {
    match st.me {
        PartyId::P0 => {
            if st.cfg.p1.is_none() || st.cfg.helper.is_none() {
                return Err("P0 needs --p1 URL and --helper URL".into());
            }
            tokio::spawn(p0_supervisor(st.clone()));
        }
        PartyId::P1 => {
            if st.cfg.helper.is_none() {
                return Err("P1 needs --helper URL".into());
            }
            tokio::spawn(dial_forever(st.clone(), PartyId::Helper));
        }
        PartyId::Helper => {}
        PartyId::Client => return Err("not a party role".into()),
    }
    tokio::spawn(control_loop(st, control));
    Ok(())
}

/// Accepts a party connection at `/v1/party` from `dialer` (whose upgrade token was good):
/// the handshake must name the same role and see the same TLS channel (`binding`).
pub async fn accept(
    st: Arc<State>,
    mut link: Duplex,
    dialer: Role,
    binding: Option<[u8; 32]>,
    kind: super::http::LinkKind,
) {
    let allowed: &[Role] = match (st.me, dialer) {
        (PartyId::Helper, Role::P0 | Role::P1) | (PartyId::P1, Role::P0) => &[dialer],
        _ => &[],
    };
    match auth::accept(
        &mut link,
        &st.cfg.keys,
        allowed,
        AUTH_TIMEOUT,
        binding.as_ref(),
    )
    .await
    {
        Ok(role) => {
            // Authenticated: a busy peer may leave large material unread for a while.
            kind.mark_party();
            let peer = party_of(role);
            if st.me == PartyId::P1 && peer == PartyId::P0 {
                // A (re)connected P0 knows nothing of our pool or loads.
                clear_pools(&st, "P0 reconnected");
            }
            st.mesh.attach(peer, link);
            st.set_status(format!("{peer:?} connected"));
        }
        Err(e) => {
            st.metrics.error("party_auth");
            st.log_limited("party_auth", || format!("refused a party connection: {e}"));
        }
    }
}

async fn dial(st: &State, peer: PartyId) -> Result<Duplex> {
    let url = match peer {
        PartyId::P1 => st.cfg.p1.as_deref(),
        PartyId::Helper => st.cfg.helper.as_deref(),
        _ => None,
    }
    .ok_or("no URL")?;
    let url = format!("{}/v1/party", url.trim_end_matches('/'));
    // With TLS the party shows its own certificate, whose name states its role.
    let tls = match (&st.cfg.ca, &st.cfg.tls) {
        (Some(ca), Some((cert, key))) => Some(sotto_net::tls::party_client_config(ca, cert, key)?),
        (Some(ca), None) => Some(sotto_net::tls::client_config(ca)?),
        (None, _) => None,
    };
    let token = auth::upgrade_token(&st.cfg.keys, role_of(peer))?;
    let (mut link, binding) = sotto_net::tls::connect_bound(
        &url,
        tls,
        party_ws_config(),
        &[(auth::UPGRADE_HEADER, token)],
    )
    .await?;
    auth::dial(
        &mut link,
        &st.cfg.keys,
        role_of(peer),
        AUTH_TIMEOUT,
        binding.as_ref(),
    )
    .await?;
    Ok(link)
}

/// Keeps a link to `peer` up: dials, and dials again when it drops.
async fn dial_forever(st: Arc<State>, peer: PartyId) {
    let mut backoff = Duration::from_millis(50);
    let mut dialed_before = false;
    loop {
        if st.mesh.is_up(peer) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match dial(&st, peer).await {
            Ok(link) => {
                st.mesh.attach(peer, link);
                st.set_status(format!("connected to {peer:?}"));
                backoff = Duration::from_millis(50);
                if st.me == PartyId::P1 && peer == PartyId::Helper && dialed_before {
                    // P0 may have loaded and pooled sessions whose material the helper sent
                    // over our previous link (P0's own links never dropped: a short freeze
                    // here): make P0 see a drop, so that it reloads over the new link instead
                    // of answering its next request with a session we never received.
                    clear_pools(&st, "the helper link was replaced");
                    st.mesh
                        .drop_link(PartyId::P0, "P1's link to the helper was replaced");
                }
                dialed_before = true;
            }
            Err(e) => {
                st.set_status(format!("waiting for {peer:?}: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Prepares a session the helper announced (its input-independent part) and then pools it:
/// P0 hands it to the first waiting request or queues it, P1 lets claims find it. A session
/// whose preparation fails, or whose model load is gone meanwhile, is dropped.
async fn pool_prepared(st: Arc<State>, model: String, batch: usize, load: u128, session: u128) {
    // P1 may get the announcement while its part of the model load is still running.
    let deadline = Instant::now() + st.cfg.timeout;
    while current_load(&st, &model) != Some(load)
        && lock(&st.loading).get(&model) == Some(&load)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let prepared = super::client::prepare_session(&st, &model, load, batch, session).await;
    let mut pools = lock(&st.pools);
    let q = (st.me == PartyId::P0).then(|| pools.queues.entry((model.clone(), batch)).or_default());
    if let Some(q) = q {
        q.requested = q.requested.saturating_sub(1);
        q.progress = Some(Instant::now());
    }
    let prepared = match prepared {
        Ok(p) if current_load(&st, &model) == Some(load) && !st.mesh.is_ended(session) => p,
        Ok(_) => {
            st.mesh.end_session(session, "the model was reloaded");
            return;
        }
        Err(e) => {
            drop(pools);
            eprintln!(
                "[{:?}] session {session:x}: preparing its material failed: {e}",
                st.me
            );
            st.mesh
                .end_session(session, "preparing the material failed");
            return;
        }
    };
    lock(&st.prepared).insert(session, prepared);
    if st.me == PartyId::P1 {
        pools.ready.insert(session, (model, batch));
        drop(pools);
        st.pool_changed.notify_waiters();
    } else {
        let q = pools.queues.entry((model, batch)).or_default();
        // The first waiter still listening gets the session (a waiter whose request was
        // dropped hands it back); otherwise it is pooled.
        let mut s = Some(session);
        while let Some(v) = s {
            match q.waiters.pop_front() {
                Some(w) => s = w.send(v).err(),
                None => break,
            }
        }
        if let Some(v) = s {
            // Beyond the configured pool for this batch size (a request that stopped waiting,
            // or a batch size no pool is kept for): not kept, freed here and at P1.
            let target = st
                .cfg
                .pool
                .iter()
                .find(|(b, _)| *b == batch)
                .map_or(0, |(_, c)| *c);
            if q.ready.len() >= target {
                drop(pools);
                lock(&st.prepared).remove(&v);
                st.mesh.end_session(v, "not needed: the pool is full");
                let _ = st.mesh.send_control(
                    PartyId::P1,
                    v,
                    &Control::Abort {
                        reason: "not needed: P0's pool is full".into(),
                    },
                );
            } else {
                q.ready.push_back(v);
            }
        }
    }
}

/// Drops every pooled session (their material is freed) and fails the waiters.
fn clear_pools(st: &State, why: &str) {
    let mut pools = lock(&st.pools);
    for (_, q) in pools.queues.drain() {
        for s in q.ready {
            st.mesh.end_session(s, why);
        }
    }
    for (s, _) in pools.ready.drain() {
        st.mesh.end_session(s, why);
    }
    // Under the pools' lock (the order `pool_prepared` takes them in), so that a session
    // prepared meanwhile is either pooled and cleared here or never pooled.
    lock(&st.prepared).clear();
}

/// P0: keeps both links up, loads every model after a (re)connection, keeps the pools full.
async fn p0_supervisor(st: Arc<State>) {
    tokio::spawn(dial_forever(st.clone(), PartyId::P1));
    tokio::spawn(dial_forever(st.clone(), PartyId::Helper));
    // The links (by generation) the models were loaded over: a link replaced between two
    // polls (a reconnection quicker than 50 ms) counts as a drop too.
    let mut loaded_with: Option<[u64; 2]> = None;
    loop {
        let links = [
            st.mesh.link_generation(PartyId::P1),
            st.mesh.link_generation(PartyId::Helper),
        ];
        let now = match links {
            [Some(a), Some(b)] => Some([a, b]),
            _ => None,
        };
        if now.is_none() || (loaded_with.is_some() && loaded_with != now) {
            if loaded_with.is_some() {
                st.set_status("a party link dropped: predictions wait for it to come back");
                st.loaded.write().unwrap_or_else(|e| e.into_inner()).clear();
                clear_pools(&st, "a party link dropped");
                loaded_with = None;
            }
            if now.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        if loaded_with.is_none() {
            match load_all(&st).await {
                Ok(()) => {
                    loaded_with = now;
                    st.set_status("ready");
                }
                Err(e) => {
                    st.set_status(format!("loading the models failed: {e}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        refill(&st);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load_all(st: &Arc<State>) -> Result<()> {
    st.loaded.write().unwrap_or_else(|e| e.into_inner()).clear();
    for m in &st.cfg.models {
        let session = new_session_id()?;
        let c = Control::Load {
            model: m.id.clone(),
            set_id: m.file.set_id.clone(),
        };
        for peer in [PartyId::P1, PartyId::Helper] {
            st.mesh.send_control(peer, session, &c)?;
        }
        let weights = m.file.server_weights()?;
        let res: Result<_> = async {
            let mut s = Server::start(st.mesh.clone(), session).await?;
            Ok(load(&mut s, &m.file.plan, weights).await?)
        }
        .await;
        st.mesh.end_session(session, "load finished");
        let l = res.map_err(|e| format!("model {}: {e}", m.id))?;
        st.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(m.id.clone(), (session, Arc::new(l)));
    }
    Ok(())
}

/// P0: asks the helper for the sessions the pools and the waiters lack.
fn refill(st: &State) {
    refill_to(st, false);
}

/// P0: asks the helper to fill every pool to its full size now (benchmarks use it to start
/// each run from a full pool).
pub fn top_up(st: &State) {
    refill_to(st, true);
}

fn refill_to(st: &State, full: bool) {
    let loaded = st.loaded.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut asks = Vec::new();
    {
        let mut pools = lock(&st.pools);
        for m in &st.cfg.models {
            let Some((load_id, _)) = loaded.get(&m.id) else {
                continue;
            };
            let mut batches: Vec<(usize, usize)> = st.cfg.pool.clone();
            for (model, batch) in pools.queues.keys() {
                if model == &m.id && !batches.iter().any(|(b, _)| b == batch) {
                    batches.push((*batch, 0));
                }
            }
            for (batch, target) in batches {
                // A streamed session is dealt when a request needs it, never pooled: its
                // material reaches the servers as they run it.
                let window = st.footprint(m, batch).window;
                let target = if window.is_some() { 0 } else { target };
                let q = pools.queues.entry((m.id.clone(), batch)).or_default();
                q.waiters.retain(|w| !w.is_closed());
                if q.requested > 0 && q.progress.is_some_and(|t| t.elapsed() > LOST_DEALS) {
                    eprintln!(
                        "[P0] the helper announced none of the {} sessions of model {} at batch {batch} asked for in {LOST_DEALS:?}: asking again",
                        q.requested, m.id
                    );
                    q.requested = 0;
                }
                // Refill in batches: only when the pool is down to half (dealing competes with
                // predictions for the CPU when parties share a host).
                let want = target + q.waiters.len();
                let have = q.ready.len() + q.requested;
                let low = full || have < target.div_ceil(2) || !q.waiters.is_empty();
                if want > have && low {
                    let count = want - have;
                    if q.requested == 0 {
                        q.progress = Some(Instant::now());
                    }
                    q.requested += count;
                    asks.push(Control::Deal {
                        model: m.id.clone(),
                        batch,
                        count,
                        load: hex(*load_id),
                        window,
                    });
                }
            }
        }
    }
    for c in asks {
        if let Err(e) = st.mesh.send_control(PartyId::Helper, 0, &c) {
            st.set_status(format!("cannot reach the helper: {e}"));
        }
    }
}

/// P0: a fresh dealt session for `batch` inputs of `model` (waits for the helper if the pool
/// is empty).
pub async fn take_session(st: &Arc<State>, model: &str, batch: usize) -> Result<u128> {
    let rx = {
        let mut pools = lock(&st.pools);
        let q = pools.queues.entry((model.to_string(), batch)).or_default();
        if let Some(s) = q.ready.pop_front() {
            drop(pools);
            refill(st);
            return Ok(s);
        }
        let (tx, rx) = oneshot::channel();
        q.waiters.push_back(tx);
        rx
    };
    refill(st);
    let deadline = tokio::time::Instant::now() + DEAL_WAIT;
    tokio::pin!(rx);
    loop {
        // Woken by the session, or every 50 ms to notice a helper or P1 link that dropped
        // (a dead or frozen party: waiting the full DEAL_WAIT would only delay the error).
        match tokio::time::timeout(LINK_POLL, &mut rx).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(_)) => {
                return Err("the party links were reset while waiting for material".into())
            }
            Err(_) => {}
        }
        for peer in [PartyId::Helper, PartyId::P1] {
            if !st.mesh.is_up(peer) {
                return Err(
                    format!("{peer:?} is unreachable: no material for this request").into(),
                );
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the helper dealt no material for a batch of {batch} within {DEAL_WAIT:?}"
            )
            .into());
        }
    }
}

/// How often a claim waiting for an announcement checks the helper link.
const LINK_POLL: Duration = Duration::from_millis(50);

/// The step of P0's message that binds a client's tag to a session. It travels on the P0–P1
/// link in the tag's own mailbox (the tag is the frame's session): tags are random 128-bit
/// names chosen by clients, sessions random 128-bit names chosen by the helper, and no
/// protocol step of a session uses this number (theirs count up from 0; sotto-core's input
/// and output steps are `u32::MAX - 1` and `u32::MAX`).
const BIND_STEP: u32 = u32::MAX - 2;

/// P0: tells P1 that the client's request `tag` is dealt session `session` (sent before any
/// message of the session, on the same link, so P1 has it first).
pub async fn bind_tag(st: &State, tag: u128, session: u128) -> Result<()> {
    let t = Tag {
        session: tag,
        step: BIND_STEP,
    };
    Ok(st
        .mesh
        .send(PartyId::P1, t, session.to_le_bytes().to_vec())
        .await?)
}

/// P0: the request `tag` will not be bound (refused, or its session failed): P1 drops its
/// binding or its waiting seed at once.
pub fn release_tag(st: &State, tag: u128, why: &str) {
    let _ = st.mesh.send_control(
        PartyId::P1,
        tag,
        &Control::Abort {
            reason: why.to_string(),
        },
    );
}

/// P1: the session P0 bound the client's `tag` to (waiting up to the party timeout). A tag is
/// bound once: its mailbox is closed after, so a replayed seed fails at once.
pub async fn bound_session(st: &State, tag: u128) -> Result<u128> {
    let t = Tag {
        session: tag,
        step: BIND_STEP,
    };
    let got = st.mesh.recv(PartyId::P0, t).await;
    st.mesh
        .end_session(tag, "a seed for this request came already");
    let bytes = got.map_err(|e| {
        format!("P0 bound no session to this request (its input share did not reach P0, or P0 refused it): {e}")
    })?;
    match <[u8; 16]>::try_from(bytes.as_slice()).map(u128::from_le_bytes) {
        Ok(s) if s != 0 => Ok(s),
        _ => Err("P0 sent a malformed binding".into()),
    }
}

/// P1: takes the dealt session `session` for `model` (waiting up to the party timeout for the
/// helper's announcement); returns its batch size.
pub async fn claim_session(st: &Arc<State>, session: u128, model: &str) -> Result<usize> {
    let deadline = Instant::now() + st.cfg.timeout;
    loop {
        let changed = st.pool_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        {
            let mut pools = lock(&st.pools);
            if let Some((m, batch)) = pools.ready.remove(&session) {
                if m != model {
                    st.mesh.end_session(session, "claimed for another model");
                    return Err(format!(
                        "session {session:x} is for model {m}, this connection is for {model}"
                    )
                    .into());
                }
                return Ok(batch);
            }
        }
        if st.mesh.is_ended(session) {
            return Err(format!("session {session:x} was already used or aborted").into());
        }
        if !st.mesh.is_up(PartyId::Helper) {
            // No announcement can come: the helper may have died between dealing to P0
            // and dealing to us.
            return Err(format!(
                "session {session:x} was not dealt to P1 and the helper is unreachable"
            )
            .into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "unknown session {session:x} (not dealt, or not announced within {:?})",
                st.cfg.timeout
            )
            .into());
        }
        // Woken by an announcement, or every 50 ms to notice a helper link that dropped.
        let _ = tokio::time::timeout(left.min(LINK_POLL), changed).await;
    }
}

fn current_load(st: &State, model: &str) -> Option<u128> {
    if st.me == PartyId::Helper {
        st.helper_loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .map(|(s, _)| *s)
    } else {
        st.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .map(|(s, _)| *s)
    }
}

async fn control_loop(st: Arc<State>, mut rx: ControlReceiver) {
    let (deal_tx, deal_rx) = mpsc::unbounded_channel::<(String, usize, usize, String)>();
    let (stream_tx, stream_rx) = std::sync::mpsc::channel::<Streamed>();
    if st.me == PartyId::Helper {
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || dealer_worker(st2, deal_rx));
        let stream_rx = Arc::new(std::sync::Mutex::new(stream_rx));
        for _ in 0..STREAM_WORKERS {
            let (st, rx) = (st.clone(), stream_rx.clone());
            tokio::task::spawn_blocking(move || stream_worker(st, rx));
        }
    }
    while let Some((from, session, c)) = rx.recv().await {
        match (st.me, c) {
            (PartyId::P1 | PartyId::Helper, Control::Load { model, set_id })
                if from == PartyId::P0 =>
            {
                // Material the helper deals for this load may reach us before our part of
                // the load finishes: remember the load so that its Ready is kept.
                lock(&st.loading).insert(model.clone(), session);
                tokio::spawn(load_here(st.clone(), session, model, set_id));
            }
            (
                PartyId::Helper,
                Control::Deal {
                    model,
                    batch,
                    count,
                    load,
                    window,
                },
            ) if from == PartyId::P0 => {
                if batch == 0 || batch > st.cfg.max_batch || count > 4096 {
                    eprintln!(
                        "[Helper] refused to deal {count} × batch {batch} (largest batch {})",
                        st.cfg.max_batch
                    );
                    continue;
                }
                match window {
                    Some(window) => {
                        for _ in 0..count.min(MAX_STREAMED_ASKS) {
                            let _ = stream_tx.send(Streamed {
                                model: model.clone(),
                                batch,
                                load: load.clone(),
                                window: window.max(1 << 16) as usize,
                            });
                        }
                    }
                    None => {
                        let _ = deal_tx.send((model, batch, count, load));
                    }
                }
            }
            (PartyId::P0 | PartyId::P1, Control::Ready { model, batch, load })
                if from == PartyId::Helper =>
            {
                let current = current_load(&st, &model).filter(|id| hex(*id) == load);
                let loading = lock(&st.loading)
                    .get(&model)
                    .copied()
                    .filter(|id| hex(*id) == load);
                let Some(load) = current.or(loading) else {
                    // Material for an older load of the model: its masks are gone.
                    st.mesh
                        .end_session(session, "material of an older model load");
                    continue;
                };
                st.dealt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(pool_prepared(st.clone(), model, batch, load, session));
            }
            (_, Control::Abort { reason }) => {
                let mut pools = lock(&st.pools);
                pools.ready.remove(&session);
                for q in pools.queues.values_mut() {
                    q.ready.retain(|s| *s != session);
                }
                drop(pools);
                lock(&st.prepared).remove(&session);
                if st.cfg.verbose {
                    eprintln!(
                        "[{:?}] {from:?} aborted session {session:x}: {reason}",
                        st.me
                    );
                }
            }
            (_, c) => eprintln!(
                "[{:?}] ignored a control message from {from:?}: {c:?}",
                st.me
            ),
        }
    }
}

async fn load_here(st: Arc<State>, session: u128, model: String, set_id: String) {
    let res: Result<()> = async {
        let m = st
            .model(&model)
            .filter(|m| m.id == model)
            .ok_or_else(|| format!("{:?} has no model {model:?}", st.me))?;
        if m.file.set_id != set_id {
            return Err(format!(
                "model {model:?}: {:?}'s file is from set {}, P0's from set {set_id}; give every party the files of one `sotto share-model` run",
                st.me, m.file.set_id
            ).into());
        }
        if st.me == PartyId::Helper {
            let mut d = Dealer::start(st.mesh.clone(), session)
                .await
                ?;
            let h = deal_load(&mut d, &m.file.plan, m.file.private)
                .await
                ?;
            st.helper_loaded
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(model.clone(), (session, Arc::new(h)));
        } else {
            let weights = m.file.server_weights()?;
            let mut s = Server::start(st.mesh.clone(), session)
                .await
                ?;
            let l = load(&mut s, &m.file.plan, weights)
                .await
                ?;
            st.loaded
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(model.clone(), (session, Arc::new(l)));
        }
        Ok(())
    }
    .await;
    st.mesh.end_session(session, "load finished");
    {
        let mut loading = lock(&st.loading);
        if loading.get(&model) == Some(&session) {
            loading.remove(&model);
        }
    }
    match res {
        Ok(()) => st.set_status(format!("model {model} loaded")),
        Err(e) => {
            st.set_status(format!("loading model {model} failed: {e}"));
            for peer in [PartyId::P0, PartyId::P1, PartyId::Helper] {
                if peer != st.me {
                    let _ = st.mesh.send_control(
                        peer,
                        session,
                        &Control::Abort {
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
    }
}

/// Helper: deals the sessions P0 asks for, one after another, on a blocking thread.
/// The helper's dealer: deals the sessions P0 asks for, one at a time, taking the (model,
/// batch) queues in turn so that a burst of large batches does not starve the small ones
/// (each refill of a pool waits at most one session of every other queue).
fn dealer_worker(st: Arc<State>, mut rx: mpsc::UnboundedReceiver<(String, usize, usize, String)>) {
    // (model, batch) -> (sessions still to deal, load); `turns` is the round-robin order.
    let mut pending: HashMap<(String, usize), (usize, String)> = HashMap::new();
    let mut turns: VecDeque<(String, usize)> = VecDeque::new();
    let add = |(model, batch, count, load): (String, usize, usize, String),
               pending: &mut HashMap<(String, usize), (usize, String)>,
               turns: &mut VecDeque<(String, usize)>| {
        let key = (model, batch);
        match pending.get_mut(&key) {
            // A newer load replaces what was asked for an older one.
            Some((n, l)) if *l == load => *n = n.saturating_add(count),
            Some(entry) => *entry = (count, load),
            None => {
                pending.insert(key.clone(), (count, load));
                turns.push_back(key);
            }
        }
    };
    loop {
        if turns.is_empty() {
            match rx.blocking_recv() {
                Some(r) => add(r, &mut pending, &mut turns),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            add(r, &mut pending, &mut turns);
        }
        let Some(key) = turns.pop_front() else {
            continue;
        };
        let Some((count, load_hex)) = pending.get_mut(&key).map(|(n, l)| {
            *n -= 1;
            (*n, l.clone())
        }) else {
            continue;
        };
        if count > 0 {
            turns.push_back(key.clone());
        } else {
            pending.remove(&key);
        }
        let (model, batch) = key;
        if !deal_one(&st, &model, batch, &load_hex) {
            // Nothing more can be dealt for this queue now (not loaded, or dealing failed).
            pending.remove(&(model.clone(), batch));
            turns.retain(|k| *k != (model.clone(), batch));
        }
    }
}

/// Helper: the loaded model `model` if its load is `load_hex` (else logged, None).
fn helper_model<'a>(
    st: &'a State,
    model: &str,
    load_hex: &str,
) -> Option<(
    Arc<sotto_model::private::HelperLoaded>,
    &'a super::ModelEntry,
)> {
    let entry = st
        .helper_loaded
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(model)
        .cloned();
    let (Some((load_id, h)), Some(m)) = (entry, st.model(model).filter(|m| m.id == model)) else {
        st.log_limited("dealing", || {
            format!("asked to deal for model {model:?}, which is not loaded")
        });
        return None;
    };
    if hex(load_id) != load_hex {
        st.log_limited("dealing", || {
            format!("asked to deal for an older load of {model:?}; skipped")
        });
        return None;
    }
    Some((h, m))
}

/// Deals one session of `batch` inputs of `model` (load `load_hex`) and announces it to P0
/// and P1; false when it cannot.
fn deal_one(st: &Arc<State>, model: &str, batch: usize, load_hex: &str) -> bool {
    let Some((h, m)) = helper_model(st, model, load_hex) else {
        return false;
    };
    let plan = &m.file.plan;
    let res: Result<u128> = block_on(async {
        let session = new_session_id()?;
        let mut d = Dealer::start(st.mesh.clone(), session).await?;
        deal_predict(&mut d, plan, &h, batch).await?;
        p::deal_output(&mut d, batch * plan.output_len).await?;
        Ok(session)
    });
    match res {
        Ok(session) => {
            let c = Control::Ready {
                model: model.to_string(),
                batch,
                load: load_hex.to_string(),
            };
            for peer in [PartyId::P0, PartyId::P1] {
                let _ = st.mesh.send_control(peer, session, &c);
            }
            true
        }
        Err(e) => {
            st.log_limited("dealing", || {
                format!("dealing a session of model {model:?} at batch {batch} failed: {e}")
            });
            st.set_status(format!("dealing failed: {e}"));
            false
        }
    }
}

/// Helper threads that deal streamed sessions (each deals one session at the pace its
/// servers take the material, so several run side by side).
const STREAM_WORKERS: usize = 2;
/// Most streamed sessions one ask of P0 may start (P0 asks for one per waiting request).
const MAX_STREAMED_ASKS: usize = 16;

/// A streamed session P0 asked for.
struct Streamed {
    model: String,
    batch: usize,
    load: String,
    window: usize,
}

/// Helper: deals the streamed sessions P0 asks for, one at a time per thread.
fn stream_worker(st: Arc<State>, rx: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<Streamed>>>) {
    loop {
        let next = lock(&rx).recv();
        let Ok(s) = next else {
            return;
        };
        deal_streamed(&st, &s);
    }
}

/// Deals one streamed session: announces it to P0 and P1 at once (they start taking its
/// material as they run it), then deals each step as the servers' acknowledgements let it.
fn deal_streamed(st: &Arc<State>, s: &Streamed) {
    let Some((h, m)) = helper_model(st, &s.model, &s.load) else {
        return;
    };
    let plan = &m.file.plan;
    let mut started = None;
    let res: Result<()> = block_on(async {
        let session = new_session_id()?;
        started = Some(session);
        let mut d = Dealer::start_streamed(st.mesh.clone(), session, s.window).await?;
        let c = Control::Ready {
            model: s.model.clone(),
            batch: s.batch,
            load: s.load.clone(),
        };
        for peer in [PartyId::P0, PartyId::P1] {
            st.mesh.send_control(peer, session, &c)?;
        }
        deal_predict(&mut d, plan, &h, s.batch).await?;
        p::deal_output(&mut d, s.batch * plan.output_len).await?;
        d.drain().await?;
        Ok(())
    });
    if let Some(session) = started {
        st.mesh.end_session(session, "streamed session dealt");
        if let Err(e) = res {
            st.log_limited("dealing", || format!("a streamed session failed: {e}"));
            for peer in [PartyId::P0, PartyId::P1] {
                let _ = st.mesh.send_control(
                    peer,
                    session,
                    &Control::Abort {
                        reason: format!("the helper's streamed dealing failed: {e}"),
                    },
                );
            }
        }
    }
}
