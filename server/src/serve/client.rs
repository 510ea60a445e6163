//! A client connection at `/v1/ws` (P0 and P1).
//!
//! The client opens with [`Hello`] and gets the model's [`Manifest`]. Then, per prediction,
//! in one of two orders:
//!
//! - tagged (what sotto's clients do): the client names the request with a random nonzero
//!   128-bit tag and sends, at once, P0 an `InputShare` frame with the tag as `session` and a
//!   request number in `step`, and P1 an `InputSeed` frame with the tag as `session` and step
//!   [`TAGGED_SEED`]. P0 takes a fresh dealt session and tells P1 over their link which
//!   session the tag stands for ([`super::party::bind_tag`]); P1 waits for that before it
//!   claims the session. Both servers answer under the tag: no session id reaches the client.
//! - assigned (older clients, and tests that script the frames): an `InputShare` with session
//!   0; P0 answers with a `Session` frame (the request number in `step`) naming a fresh dealt
//!   session and starts; the client then sends P1 an `InputSeed` frame for that session (step
//!   0). This costs the client a round trip to P0 before P1 can start.
//!
//! Each server sends an `Output` frame with its share, or an `Error` frame, under the name the
//! client used (the tag, or the session).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sotto_core::protocols as p;
use sotto_core::session::{Server, OUTPUT_STEP};
use sotto_core::transport::{PartyId, Tag, Transport};
use sotto_core::{CoreError, TransportError};
use sotto_model::private::{finish_predict, prepare_predict, Loaded, PreparedPrediction};
use sotto_net::{BoxSink, Duplex, LinkError, WsTransport};
use sotto_wire::{
    decode, Control, ErrorCode, ErrorPayload, Frame, Hello, Kind, Role, DEFAULT_MAX_PAYLOAD,
    TAGGED_SEED,
};
use tokio::sync::mpsc;

use super::admit::{Admission, Refusal, MAX_STRIKES};
use super::error::Result;
use super::party::{bind_tag, bound_session, claim_session, release_tag, take_session};
use super::State;

/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued for a client that does not read them before its connection is closed.
const OUT_QUEUE: usize = 256;

/// Frames to one client: a bounded queue to its connection's writer. A client that lets it
/// fill (it does not read its results) is disconnected: `kick` tells the connection's reader.
#[derive(Clone)]
pub(crate) struct Out {
    tx: mpsc::Sender<Vec<u8>>,
    kick: Arc<tokio::sync::Notify>,
}

impl Out {
    /// Queues a frame; false (and the connection is closed) when the client is not reading.
    fn push(&self, frame: Vec<u8>) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

fn error_frame(session: u128, step: u32, code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    let e = ErrorPayload::new(code, message);
    Frame::json(Kind::Error, session, step, &e)
        .map(|f| f.encode())
        .unwrap_or_default()
}

/// How long one write to a client may take: a client that does not read (its socket's buffers
/// full) is disconnected rather than holding the connection.
const CLIENT_WRITE: Duration = Duration::from_secs(5);
/// How long the server lets a client connection go without sending it anything before it
/// sends a WebSocket ping.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Counts an open client connection for as long as it lives (whichever way it ends).
struct Counted(Arc<State>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.metrics.clients.dec();
    }
}

/// Sends a last frame and closes, each within [`CLIENT_WRITE`]; after a failed send the sink
/// is not touched again (a failed sink must not be polled to close).
async fn send_last(sink: &mut BoxSink, frame: Vec<u8>) {
    if let Ok(Ok(())) = tokio::time::timeout(CLIENT_WRITE, sink.send(frame)).await {
        let _ = tokio::time::timeout(CLIENT_WRITE, sink.close()).await;
    }
}

/// Handles one client connection until it closes.
pub async fn handle(st: Arc<State>, link: Duplex) {
    st.metrics.clients.inc();
    let _counted = Counted(st.clone());
    let Duplex {
        mut sink,
        mut stream,
    } = link;
    // Hello → Manifest.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(b))) => decode(&b, 4096).map_err(|e| e.to_string()).and_then(|f| {
            f.parse_json::<Hello>(Kind::Hello)
                .map_err(|e| e.to_string())
        }),
        Ok(_) => Err("the connection closed before its hello".to_string()),
        Err(_) => Err(format!("no hello within {HELLO_TIMEOUT:?}")),
    };
    // The API key, when the deployment requires one: checked before the manifest is sent.
    let key = match (&hello, &st.cfg.client_keys) {
        (Ok(h), Some(keys)) if h.role == Role::Client => match keys.check(h.api_key.as_deref()) {
            Ok(k) => {
                if st.cfg.verbose {
                    eprintln!("[{:?}] a client with key {:?} connected", st.me, k.name);
                }
                Some(k)
            }
            Err(refusal) => {
                st.metrics.error("unauthenticated");
                let e = error_frame(0, 0, ErrorCode::Unauthenticated, refusal.message());
                send_last(&mut sink, e).await;
                return;
            }
        },
        _ => None,
    };
    let model = match hello {
        Ok(h) if h.role == Role::Client => match st.model(&h.model_id) {
            Some(m) => m,
            None => {
                st.metrics.error("unknown_model");
                let known: Vec<&str> = st.cfg.models.iter().map(|m| m.id.as_str()).collect();
                let e = error_frame(
                    0,
                    0,
                    ErrorCode::UnknownModel,
                    format!(
                        "no model {:?} here; models: {}",
                        h.model_id,
                        known.join(", ")
                    ),
                );
                send_last(&mut sink, e).await;
                return;
            }
        },
        Ok(h) => {
            st.metrics.error("bad_hello");
            let e = error_frame(
                0,
                0,
                ErrorCode::BadHello,
                format!("a {:?} cannot connect here (parties use /v1/party)", h.role),
            );
            send_last(&mut sink, e).await;
            return;
        }
        Err(e) => {
            st.metrics.error("bad_hello");
            send_last(&mut sink, error_frame(0, 0, ErrorCode::BadHello, e)).await;
            return;
        }
    };
    let manifest = match Frame::json(Kind::Manifest, 0, 0, &st.manifest(model)) {
        Ok(f) => f.encode(),
        Err(_) => return,
    };
    if !matches!(
        tokio::time::timeout(CLIENT_WRITE, sink.send(manifest)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let (tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let out = Out {
        tx,
        kick: Arc::new(tokio::sync::Notify::new()),
    };
    let counted = st.clone();
    let writer = tokio::spawn(async move {
        loop {
            // A long prediction sends nothing for minutes: a ping each KEEPALIVE keeps the
            // connection from looking dead (to the server's own I/O idle limit and to any
            // proxy on the way); the client's WebSocket answers it by itself.
            let b = match tokio::time::timeout(KEEPALIVE, out_rx.recv()).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(_) => Vec::new(),
            };
            counted
                .client_sent
                .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if !matches!(
                tokio::time::timeout(CLIENT_WRITE, sink.send(b)).await,
                Ok(Ok(()))
            ) {
                // Failed, or the client stopped reading: drop the connection (a failed sink
                // is not polled again).
                return;
            }
        }
        let _ = tokio::time::timeout(CLIENT_WRITE, sink.close()).await;
    });
    let model_id = model.id.clone();
    let plan = &model.file.plan;
    // Bytes of one input in P0's share: shares of `k`-bit codes and wrap bits where the
    // deployment enforces the input range (`InputBits` frames), additive 8-byte shares
    // otherwise.
    let (input_kind, per_input) = match plan.input_bits() {
        Some(k) => (
            Kind::InputBits,
            plan.input_len * sotto_core::share::bits_width(k),
        ),
        None => (Kind::InputShare, plan.input_len * 8),
    };
    let conn = st.admission.connection();
    let mut strikes = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            _ = out.kick.notified() => {
                st.metrics.error("slow_client");
                break;
            }
            m = tokio::time::timeout(st.cfg.idle_timeout, stream.next()) => m,
        };
        let msg = match next {
            Err(_) if conn.idle() => {
                st.metrics.error("idle");
                out.push(error_frame(
                    0,
                    0,
                    ErrorCode::Idle,
                    format!(
                        "nothing sent for {:?}: the connection is closed",
                        st.cfg.idle_timeout
                    ),
                ));
                break;
            }
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(m)) => m,
        };
        if strikes >= MAX_STRIKES {
            st.metrics.error("too_many_errors");
            out.push(error_frame(
                0,
                0,
                ErrorCode::TooManyErrors,
                format!("{strikes} bad requests on this connection: it is closed"),
            ));
            break;
        }
        let bytes = match msg {
            Ok(b) => b,
            Err(e) => {
                // Tell the client why its connection ends (an oversized message, a text
                // message, a broken frame) before closing it.
                // A connection that just dropped gets no answer.
                let code = match e {
                    LinkError::TooLarge(_) => Some(ErrorCode::TooLarge),
                    LinkError::Text => Some(ErrorCode::BadMessage),
                    LinkError::Protocol(_) => Some(ErrorCode::BadFrame),
                    LinkError::Io(_) => None,
                };
                if let Some(code) = code {
                    st.metrics.error(code.as_str());
                    out.push(error_frame(0, 0, code, e.to_string()));
                }
                if st.cfg.verbose {
                    eprintln!("[{:?}] client connection error: {e}", st.me);
                }
                break;
            }
        };
        let f = match decode(&bytes, DEFAULT_MAX_PAYLOAD) {
            Ok(f) => f,
            Err(e) => {
                let code = match e {
                    sotto_wire::WireError::TooLarge { .. } => ErrorCode::TooLarge,
                    _ => ErrorCode::BadFrame,
                };
                st.metrics.error(code.as_str());
                out.push(error_frame(0, 0, code, e.to_string()));
                break;
            }
        };
        match (st.me, f.kind) {
            (PartyId::P0, Kind::InputShare | Kind::InputBits) => {
                // The client's tag for the request (0: the assigned order, answered with a
                // Session frame), and the name every answer to it carries.
                let tag = f.session;
                // A refusal: an error under the request's name; a tagged request's seed,
                // waiting at P1 for its binding, is dropped there at once.
                let refuse = |code: ErrorCode, message: String| {
                    if tag != 0 {
                        release_tag(&st, tag, &message);
                    }
                    out.push(error_frame(tag, f.step, code, message));
                };
                if f.kind != input_kind {
                    strikes += 1;
                    st.metrics.error("bad_frame");
                    refuse(
                        ErrorCode::BadFrame,
                        match plan.input_bits() {
                            Some(k) => format!(
                                "model {model_id} enforces its input range: it takes shares of {k}-bit input codes in an InputBits frame (manifest input_bits), not 64-bit additive shares; the client is older than the servers, update it"
                            ),
                            None => format!(
                                "model {model_id} takes additive input shares in an InputShare frame (its manifest sets no input_bits)"
                            ),
                        },
                    );
                    continue;
                }
                let len = f.payload.len();
                if len == 0 || len % per_input != 0 || len / per_input > st.cfg.max_batch {
                    strikes += 1;
                    st.metrics.error("bad_shape");
                    refuse(
                        ErrorCode::BadShape,
                        format!(
                            "{len} bytes of input share: model {model_id} takes inputs of {} values ({per_input} bytes) each, 1 to {} per request",
                            plan.input_len, st.cfg.max_batch
                        ),
                    );
                    continue;
                }
                if let Some(Err(wait)) = key.as_ref().map(|k| k.take()) {
                    st.metrics.error("rate_limited");
                    refuse(
                        ErrorCode::RateLimited,
                        format!(
                            "this API key may make {} requests per second: retry in {} ms",
                            key.as_ref().and_then(|k| k.rate).unwrap_or(0.0),
                            wait.as_millis().max(1)
                        ),
                    );
                    continue;
                }
                let batch = len / per_input;
                let reserved = match st.admission.reserve(
                    &conn,
                    Admission::weight(1, st.footprint(model, batch).bytes),
                ) {
                    Ok(r) => r,
                    Err(Refusal::TooLarge { kib, limit_kib }) => {
                        strikes += 1;
                        st.metrics.error("too_large");
                        let most = st.max_batch(model);
                        let what = if most == 0 {
                            format!(
                                "model {model_id} cannot run here: its heaviest step alone needs more; raise --inflight-budget-mb to at least {}",
                                st.budget_needed_mb(model)
                            )
                        } else {
                            format!("send at most {most} inputs of model {model_id} per request")
                        };
                        refuse(
                            ErrorCode::TooLarge,
                            format!(
                                "a batch of {batch} needs {} MiB of correlated randomness per server; this deployment admits {} MiB per request (--inflight-budget-mb): {what}",
                                kib / 1024,
                                limit_kib / 1024,
                            ),
                        );
                        continue;
                    }
                    Err(Refusal::Busy(m)) => {
                        st.metrics.error("busy");
                        refuse(ErrorCode::Busy, m);
                        continue;
                    }
                };
                let (st, out, model_id) = (st.clone(), out.clone(), model_id.clone());
                tokio::spawn(async move {
                    let refuse = |code: ErrorCode, message: String| {
                        if tag != 0 {
                            release_tag(&st, tag, &message);
                        }
                        out.push(error_frame(tag, f.step, code, message));
                    };
                    // Held until the session ends: its material counts against the budget.
                    let _admitted = match reserved.admit(len).await {
                        Ok(a) => a,
                        Err(e) => {
                            st.metrics.error("busy");
                            refuse(ErrorCode::Busy, e.message());
                            return;
                        }
                    };
                    if !st.ready() {
                        st.metrics.error("not_ready");
                        refuse(
                            ErrorCode::NotReady,
                            format!("the parties are not ready: {}", st.status()),
                        );
                        return;
                    }
                    match take_session(&st, &model_id, batch).await {
                        Ok(session) if tag != 0 => {
                            // If P1 cannot be told (its link is down), the session fails at
                            // its first message from P1 and the client hears why from
                            // run_session.
                            let _ = bind_tag(&st, tag, session).await;
                            run_session(&st, &model_id, batch, session, tag, f.payload, &out).await;
                        }
                        Ok(session) => {
                            out.push(
                                Frame {
                                    kind: Kind::Session,
                                    session,
                                    step: f.step,
                                    payload: Vec::new(),
                                }
                                .encode(),
                            );
                            run_session(&st, &model_id, batch, session, session, f.payload, &out)
                                .await;
                        }
                        Err(e) => {
                            st.metrics.error("no_material");
                            refuse(ErrorCode::NoMaterial, e.to_string());
                        }
                    }
                });
            }
            (PartyId::P1, Kind::InputSeed) if f.session != 0 => {
                if f.payload.len() != 32 {
                    strikes += 1;
                    st.metrics.error("bad_shape");
                    out.push(error_frame(
                        f.session,
                        0,
                        ErrorCode::BadShape,
                        format!("an input seed is 32 bytes, got {}", f.payload.len()),
                    ));
                    continue;
                }
                let claim = match st.admission.claim(&conn) {
                    Ok(c) => c,
                    Err(e) => {
                        st.metrics.error("busy");
                        out.push(error_frame(f.session, 0, ErrorCode::Busy, e.message()));
                        continue;
                    }
                };
                let (st, out, model_id) = (st.clone(), out.clone(), model_id.clone());
                let running = conn.running();
                // The name the client gave the request: its tag, or (step 0) the session P0
                // assigned.
                let label = f.session;
                let tagged = f.step == TAGGED_SEED;
                tokio::spawn(async move {
                    // The slot is held while the seed waits for its session, not while the
                    // session runs (that is P0's budget).
                    let session = if tagged {
                        bound_session(&st, label).await
                    } else {
                        Ok(label)
                    };
                    let claimed = match session {
                        Ok(session) => claim_session(&st, session, &model_id)
                            .await
                            .map(|batch| (session, batch))
                            .map_err(|e| (Some(session), e)),
                        Err(e) => Err((None, e)),
                    };
                    drop(claim);
                    let _running = running;
                    match claimed {
                        Ok((session, batch)) => {
                            run_session(&st, &model_id, batch, session, label, f.payload, &out)
                                .await
                        }
                        Err((session, e)) => {
                            st.metrics.error("unknown_session");
                            // P0 may be running this session: end it there now rather than
                            // after its timeout (harmless if P0 does not know it).
                            if let Some(session) = session {
                                let _ = st.mesh.send_control(
                                    PartyId::P0,
                                    session,
                                    &Control::Abort {
                                        reason: e.to_string(),
                                    },
                                );
                            }
                            out.push(error_frame(
                                label,
                                0,
                                ErrorCode::UnknownSession,
                                e.to_string(),
                            ));
                        }
                    }
                });
            }
            (_, Kind::Close) => break,
            (me, k) => {
                st.metrics.error("bad_frame");
                out.push(error_frame(
                    f.session,
                    f.step,
                    ErrorCode::BadFrame,
                    format!(
                        "{me:?} does not take a {k:?} frame (session {:x}) from a client",
                        f.session
                    ),
                ));
                break;
            }
        }
    }
    drop(out);
    // The reader is done: the writer gets a last chance to flush, then the connection goes.
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLIENT_WRITE, writer).await.is_err() {
        abort.abort();
    }
}

/// A session whose input-independent part is done (material parsed, `A_i·F` computed), kept
/// with the pool until a client's request takes it.
pub(crate) struct PreparedSession {
    server: Server<Arc<SessionLink>>,
    link: Arc<SessionLink>,
    prep: PreparedPrediction,
    /// The model load it was prepared with.
    load: u128,
}

/// Starts session `session` of `model` (its material dealt) and does its input-independent
/// part for `batch` inputs.
pub(crate) async fn prepare_session(
    st: &Arc<State>,
    model: &str,
    load: u128,
    batch: usize,
    session: u128,
) -> Result<PreparedSession> {
    let m = st.model(model).ok_or("model gone")?;
    let loaded = loaded_model(st, model, load)?;
    let link = Arc::new(SessionLink {
        mesh: st.mesh.clone(),
        out: Mutex::new(None),
        input: Mutex::new(None),
    });
    let mut server = Server::start(link.clone(), session).await?;
    let prep = prepare_predict(&mut server, &m.file.plan, &loaded, batch).await?;
    Ok(PreparedSession {
        server,
        link,
        prep,
        load,
    })
}

/// The loaded model `model` if it is load `load`.
fn loaded_model(st: &State, model: &str, load: u128) -> Result<Arc<Loaded>> {
    match st
        .loaded
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(model)
    {
        Some((id, l)) if *id == load => Ok(l.clone()),
        Some(_) => Err("the model was reloaded since this session was dealt".into()),
        None => Err("the model is not loaded (a party link dropped?)".into()),
    }
}

/// Runs this server's part of one prediction and sends the client its output share (or an
/// error) under `label`, the name the client gave the request (its tag, or the session);
/// aborts the session at the peer on failure; frees the session's messages.
async fn run_session(
    st: &Arc<State>,
    model_id: &str,
    batch: usize,
    session: u128,
    label: u128,
    input: Vec<u8>,
    out: &Out,
) {
    let started = Instant::now();
    st.metrics.active.inc();
    let prepared = st
        .prepared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&session);
    let res: Result<()> = async {
        let m = st.model(model_id).ok_or("model gone")?;
        let plan = &m.file.plan;
        let Some(PreparedSession {
            mut server,
            link,
            prep,
            load,
        }) = prepared
        else {
            return Err("this session's material was not prepared".into());
        };
        if prep.batch() != batch {
            return Err(format!(
                "session prepared for a batch of {}, the request has {batch}",
                prep.batch()
            )
            .into());
        }
        let loaded = loaded_model(st, model_id, load)?;
        if server.is_streamed() {
            st.metrics.streamed.inc();
        }
        link.attach(out.clone(), input, label);
        let xs = sotto_model::private::receive_input(&server, plan, batch).await?;
        let y = finish_predict(&mut server, plan, &loaded, prep, xs).await?;
        Ok(p::output(&mut server, &y, 64).await?)
    }
    .await;
    st.metrics.active.dec();
    match res {
        Ok(()) => {
            st.metrics.latency.observe(started.elapsed().as_secs_f64());
            st.metrics
                .requests
                .get_or_create(&vec![("outcome".into(), "ok".into())])
                .inc();
            st.mesh.end_session(session, "session finished");
            if st.cfg.verbose {
                eprintln!(
                    "[{:?}] session {session:x}: batch {batch} in {:.2} ms",
                    st.me,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        Err(e) => {
            st.metrics.error("session_failed");
            st.metrics
                .requests
                .get_or_create(&vec![("outcome".into(), "error".into())])
                .inc();
            let peer = if st.me == PartyId::P0 {
                PartyId::P1
            } else {
                PartyId::P0
            };
            let _ = st.mesh.send_control(
                peer,
                session,
                &Control::Abort {
                    reason: e.to_string(),
                },
            );
            if st.me == PartyId::P0 && label != session {
                // The tag's binding may still wait at P1 (its seed never came): dropped.
                release_tag(st, label, &e.to_string());
            }
            st.mesh.end_session(session, "session failed");
            out.push(error_frame(
                label,
                0,
                ErrorCode::SessionFailed,
                format!("{:?}: {e}", st.me),
            ));
            eprintln!("[{:?}] session {session:x} failed: {e}", st.me);
        }
    }
}

/// A session's transport: party messages over the mesh, the client's input from its frame,
/// output shares to the client's connection (both attached when a request takes the session).
pub(crate) struct SessionLink {
    mesh: Arc<WsTransport>,
    /// The client's connection and the name its output goes under.
    out: Mutex<Option<(Out, u128)>>,
    input: Mutex<Option<Vec<u8>>>,
}

impl SessionLink {
    fn attach(&self, out: Out, input: Vec<u8>, label: u128) {
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some((out, label));
        *self.input.lock().unwrap_or_else(|e| e.into_inner()) = Some(input);
    }
}

impl Transport for SessionLink {
    fn id(&self) -> PartyId {
        self.mesh.id()
    }

    async fn send(&self, to: PartyId, tag: Tag, data: Vec<u8>) -> sotto_core::Result<()> {
        if to != PartyId::Client {
            return self.mesh.send(to, tag, data).await;
        }
        debug_assert_eq!(tag.step, OUTPUT_STEP);
        let out = self.out.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (out, label) = out.ok_or_else(|| {
            CoreError::from(TransportError::PeerGone(
                "no client is attached to this session".into(),
            ))
        })?;
        let f = Frame {
            kind: Kind::Output,
            session: label,
            step: tag.step,
            payload: data,
        };
        if out.push(f.encode()) {
            Ok(())
        } else {
            Err(TransportError::PeerGone(
                "the client's connection closed or does not read its results".into(),
            )
            .into())
        }
    }

    async fn recv(&self, from: PartyId, tag: Tag) -> sotto_core::Result<Vec<u8>> {
        if from != PartyId::Client {
            return self.mesh.recv(from, tag).await;
        }
        self.input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                CoreError::from(TransportError::PeerGone(
                    "no client input for this session".into(),
                ))
            })
    }
}
