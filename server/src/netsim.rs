//! Simulated wide-area links for `sotto bench --link-delay-ms D --link-mbps B`: a TCP proxy
//! on loopback per link, forwarding each direction of each connection with a one-way delay
//! and a bandwidth cap. It works below TLS, WebSockets and sotto's framing, so those stay
//! real; only the time bytes take changes.
//!
//! Each direction is a pipe: a reader takes up to [`CHUNK`] bytes from the source socket,
//! stamps them with the time their last bit leaves a link of the given rate (after the bytes
//! before them, so the rate holds across chunks) plus the delay, and a writer hands them to
//! the destination at that time. Chunks are stamped as they are read and do not wait for one
//! another's delay, so a pipe keeps up to a bandwidth-delay product in flight as a real link
//! does. What a pipe holds is bounded by its window ([`window`]: the bandwidth-delay product
//! and some slack, at most [`MAX_WINDOW`]); the reader stops reading the source when the
//! window is full, which the source sees as TCP back-pressure.
//!
//! Bench-only: nothing in `sotto serve` reaches this module.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Most bytes read from a socket at once (the unit a pipe stamps and delays).
pub const CHUNK: usize = 16 << 10;

/// Most bytes a pipe holds, whatever its bandwidth-delay product.
pub const MAX_WINDOW: usize = 64 << 20;

/// Most chunks a pipe holds (small reads are bounded by count as well as by bytes).
const MAX_CHUNKS: usize = 8192;

/// One link's simulated properties, the same for both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// One-way delay (the round trip is twice this).
    pub delay: Duration,
    /// Bandwidth cap per direction in bits per second; `None` for no cap.
    pub bits_per_s: Option<f64>,
}

impl LinkSpec {
    /// From the bench's flags: milliseconds of one-way delay and Mbit/s.
    pub fn new(delay_ms: f64, mbps: Option<f64>) -> Result<LinkSpec, String> {
        if !(delay_ms.is_finite() && (0.0..=60_000.0).contains(&delay_ms)) {
            return Err(format!(
                "--link-delay-ms {delay_ms}: give 0 to 60000 milliseconds"
            ));
        }
        if let Some(m) = mbps {
            if !(m.is_finite() && m >= 0.001) {
                return Err(format!("--link-mbps {m}: give at least 0.001 Mbit/s"));
            }
        }
        Ok(LinkSpec {
            delay: Duration::from_secs_f64(delay_ms / 1e3),
            bits_per_s: mbps.map(|m| m * 1e6),
        })
    }

    /// The time `n` bytes take to leave the link at its rate.
    fn transmission(&self, n: usize) -> Duration {
        match self.bits_per_s {
            Some(r) => Duration::from_secs_f64(n as f64 * 8.0 / r),
            None => Duration::ZERO,
        }
    }
}

/// Bytes a pipe may hold: what is in flight at full rate over the delay (the
/// bandwidth-delay product) plus four chunks; without a cap, [`MAX_WINDOW`] (a pipe with no
/// cap is as fast as the machine, and the window then bounds the rate to it per delay).
pub fn window(spec: &LinkSpec) -> usize {
    match spec.bits_per_s {
        Some(r) => {
            let bdp = r / 8.0 * spec.delay.as_secs_f64();
            (bdp.ceil() as usize)
                .saturating_add(4 * CHUNK)
                .min(MAX_WINDOW)
        }
        None => MAX_WINDOW,
    }
}

/// A switch shared by proxies: when off they forward at once (no delay, no cap). The bench
/// turns it off while it waits for the helper to fill the pool before a pool-served run
/// (untimed), and on for everything it times.
#[derive(Debug, Clone)]
pub struct Shaping(Arc<AtomicBool>);

impl Shaping {
    /// A switch, on.
    pub fn on() -> Shaping {
        Shaping(Arc::new(AtomicBool::new(true)))
    }

    /// Turns shaping on or off for bytes read from now on.
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running proxy: listens on 127.0.0.1 and forwards each connection to its target.
/// Dropping it stops the listener and every connection it forwards.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `target` with `spec` in both directions.
    pub async fn start(
        target: SocketAddr,
        spec: LinkSpec,
        shaping: Shaping,
    ) -> Result<Proxy, String> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| format!("link proxy: cannot listen: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("link proxy: {e}"))?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                while conns.try_join_next().is_some() {}
                let Ok((inbound, _)) = listener.accept().await else {
                    // Out of descriptors or similar: wait a little rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shaping = shaping.clone();
                conns.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return; // the dialer sees the connection close
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(
                        pipe(ir, ow, spec, shaping.clone()),
                        pipe(or, iw, spec, shaping)
                    );
                });
            }
        });
        Ok(Proxy { addr, task })
    }

    /// Where to dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards `from` to `to` with `spec`'s delay and rate until `from` ends (then `to` is shut
/// for writing) or either fails.
async fn pipe(from: OwnedReadHalf, to: OwnedWriteHalf, spec: LinkSpec, shaping: Shaping) {
    let window = window(&spec);
    let room = Arc::new(Semaphore::new(window));
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_CHUNKS);
    let writer = {
        let room = room.clone();
        async move {
            while let Some((at, data)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if write_all(&to, &data).await.is_err() {
                    break;
                }
                room.add_permits(data.len());
            }
            // Dropping `to` shuts the destination for writing (the source's end, forwarded
            // after its bytes), or closes it after an error.
            drop(to);
        }
    };
    let reader = async move {
        // When the link is next free to start sending.
        let mut free = Instant::now();
        loop {
            let Ok(permit) = room.clone().acquire_many_owned(CHUNK as u32).await else {
                break;
            };
            let mut buf = vec![0u8; CHUNK];
            let n = match read_some(&from, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            permit.forget();
            room.add_permits(CHUNK - n);
            buf.truncate(n);
            let now = Instant::now();
            let at = if shaping.is_on() {
                free = free.max(now) + spec.transmission(n);
                free + spec.delay
            } else {
                free = free.max(now);
                now
            };
            if tx.send((at, buf)).await.is_err() {
                break;
            }
        }
        // Dropping `tx` lets the writer finish what is queued, then end.
    };
    tokio::join!(reader, writer);
}

async fn read_some(r: &OwnedReadHalf, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        r.readable().await?;
        match r.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(w: &OwnedWriteHalf, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback (reads and writes back until the peer closes).
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let a = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (r, w) = s.into_split();
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = read_some(&r, &mut buf).await {
                        if n == 0 || write_all(&w, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        a
    }

    /// Sends `data` through the proxy to the echo server and reads it all back; returns what
    /// came back, the time to the first byte back and the time to the last.
    async fn round_trip(proxy: SocketAddr, data: &[u8]) -> (Vec<u8>, Duration, Duration) {
        let s = TcpStream::connect(proxy).await.expect("connect");
        let (r, w) = s.into_split();
        let t = Instant::now();
        let sent = data.to_vec();
        let writer = tokio::spawn(async move { write_all(&w, &sent).await.map(|_| w) });
        let mut back = Vec::new();
        let mut first = None;
        let mut buf = vec![0u8; 65536];
        while back.len() < data.len() {
            let n = read_some(&r, &mut buf).await.expect("read");
            assert!(n > 0, "closed after {} of {} bytes", back.len(), data.len());
            first.get_or_insert_with(|| t.elapsed());
            back.extend_from_slice(&buf[..n]);
        }
        let last = t.elapsed();
        writer.await.expect("join").expect("write");
        (back, first.unwrap_or_default(), last)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_twice_the_delay_and_bytes_pass_unchanged() {
        let target = echo().await;
        let spec = LinkSpec::new(30.0, None).expect("spec");
        let p = Proxy::start(target, spec, Shaping::on())
            .await
            .expect("proxy");
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (back, first, last) = round_trip(p.addr(), &data).await;
        assert!(back == data, "bytes changed in transit");
        assert!(
            first >= 2 * spec.delay,
            "first byte back after {first:?}, under 2 × 30 ms"
        );
        // Chunks in flight do not wait for one another: the 13 chunks out (and more back, the
        // echo server writes 4 kB at a time) take about one round trip, not one each.
        assert!(
            last < Duration::from_millis(400),
            "200 kB back after {last:?}"
        );
        let (back, first, _) = round_trip(p.addr(), b"ping").await;
        assert_eq!(back, b"ping");
        assert!(first >= 2 * spec.delay, "a ping came back after {first:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rate_cap_holds_and_the_window_is_bounded() {
        let target = echo().await;
        // 8 Mbit/s = 1 MB/s each way; 300 kB out and back takes at least 0.3 s (the two
        // directions overlap) plus the round trip.
        let spec = LinkSpec::new(5.0, Some(8.0)).expect("spec");
        assert!(window(&spec) <= 5_000 + 4 * CHUNK + 1);
        let p = Proxy::start(target, spec, Shaping::on())
            .await
            .expect("proxy");
        let data = vec![7u8; 300_000];
        let t = Instant::now();
        let (back, _, _) = round_trip(p.addr(), &data).await;
        let took = t.elapsed();
        assert_eq!(back.len(), data.len());
        assert!(
            took >= Duration::from_millis(300),
            "300 kB at 1 MB/s took {took:?}"
        );
        assert!(
            took < Duration::from_millis(3000),
            "300 kB at 1 MB/s took {took:?}"
        );
        // Shaping off: at once.
        let off = Shaping::on();
        off.set(false);
        let q = Proxy::start(target, spec, off).await.expect("proxy");
        let t = Instant::now();
        let (back, _, _) = round_trip(q.addr(), &data).await;
        assert_eq!(back.len(), data.len());
        assert!(t.elapsed() < Duration::from_millis(300));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(LinkSpec::new(-1.0, None).is_err());
        assert!(LinkSpec::new(f64::NAN, None).is_err());
        assert!(LinkSpec::new(10.0, Some(0.0)).is_err());
        assert!(LinkSpec::new(10.0, Some(100.0)).is_ok());
    }
}
