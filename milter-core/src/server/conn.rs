//! The per-connection driver: feeds socket bytes to a [`MilterSession`], runs the handler's
//! callbacks, and writes each batch of replies in one write.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::ShutdownHandle;
use super::limits::{Limits, Timeouts};
use super::metrics::{CloseReason, ConnectionTally, ServerMetrics, stage_index, verdict_kind};
use crate::error::{Error, Phase, ProtocolError, UsageError};
use crate::handler::{Context, EomActions, Milter};
use crate::proto::flags::Actions;
use crate::proto::{Reply, Verdict};
use crate::session::milter::{Event, MilterSession, SessionConfig};

/// Smallest free space offered to each socket read inside a message, so large bodies are
/// not read in dribbles; frames themselves are bounded by [`Limits::max_frame`].
const READ_CHUNK: usize = 16 * 1024;

/// The read buffer while the connection waits between messages or negotiates: the next
/// frames are small commands (OPTNEG, CONNECT, HELO, MAIL and their macros), and the wait
/// can last hours. Frames decoded from the buffer are slices of it (HELO, the CONNECT
/// host name and macros stay for the connection's life), so a [`READ_CHUNK`] buffer here
/// would be pinned, and a fresh one reserved, for every idle connection; this one costs
/// well under 1 KiB. A larger frame still arrives whole: the buffer grows as it comes.
const IDLE_READ: usize = 512;

/// Largest write buffer kept between messages (replies are a few bytes; a body
/// replacement can queue [`Limits::max_send`]-sized frames, whose space is released).
const WRITE_KEEP: usize = 4 * 1024;

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Per-phase timeouts, the callback budget and the PROGRESS interval.
    pub timeouts: Timeouts,
    /// Frame and macro limits (`max_connections` is not used here).
    pub limits: Limits,
    /// The number logged with this connection and shown to handlers.
    pub connection_id: u64,
    /// When triggered, the connection ends now, whatever it is doing: a callback that is
    /// running is dropped and its command answered with
    /// [`callback_timeout_verdict`](Self::callback_timeout_verdict), then `abort` (inside
    /// a message) and `close` run and the connection closes.
    ///
    /// The server triggers it when its drain deadline passes. A graceful shutdown by
    /// itself leaves open connections alone: they are served, further messages included,
    /// until the MTA quits or closes.
    pub shutdown: ShutdownHandle,
    /// Where the connection counts itself (`None`: not counted).
    pub metrics: Option<ServerMetrics>,
    /// The answer to a command whose callback ran out of its budget
    /// ([`Timeouts::callback`]) or was cut short by [`shutdown`](Self::shutdown). Default
    /// [`Verdict::Tempfail`].
    pub callback_timeout_verdict: Verdict,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            connection_id: 0,
            shutdown: ShutdownHandle::default(),
            metrics: None,
            callback_timeout_verdict: Verdict::Tempfail,
        }
    }
}

/// Serves one accepted connection until the MTA quits or closes, the connection fails,
/// or [`ConnectionConfig::shutdown`] stops it.
///
/// A fresh handler comes from `factory` (a second one only after `QUIT_NC`). Every
/// callback runs under the budget [`Timeouts::callback`]; while one runs that owes the MTA
/// an answer, the socket is watched, and if the MTA closes it (it gave up waiting) the
/// callback is dropped and the connection ends. The outcome is logged once, with the
/// reason, in the current tracing span; the handler's `close` has run by the time this
/// returns. A peer's protocol error, a timeout or an I/O error ends only this connection.
pub async fn serve_connection<S, F, M>(
    io: S,
    factory: &F,
    config: &ConnectionConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
    F: Fn() -> M + Send + Sync,
    M: Milter,
{
    let span = tracing::Span::current();
    let metrics = config.metrics.as_ref();
    let mut tally = ConnectionTally::open(metrics);
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut conn = Conn {
        session: MilterSession::new(SessionConfig {
            max_frame: config.limits.max_frame,
            max_send: config.limits.max_send,
            macro_limit: config.limits.macro_bytes,
        }),
        milter: factory(),
        message: 0,
        in_message: false,
        eom_done: false,
        id: config.connection_id,
        span: &span,
        progress_every: config.timeouts.progress_interval,
        budget: config.timeouts.callback,
        timeout_verdict: &config.callback_timeout_verdict,
        stop: &config.shutdown,
        spare: BytesMut::new(),
        peer_eof: false,
        small_read: false,
        metrics,
        write_timeouts: config.timeouts,
    };
    let outcome = conn.run(&mut rd, &mut wr, factory, config).await;
    tally.close(match &outcome {
        Ok(Closed::Quit) => CloseReason::Quit,
        Ok(Closed::Eof | Closed::PeerGone(_)) => CloseReason::Eof,
        Ok(Closed::Stopped) => CloseReason::Shutdown,
        Err(Error::Protocol(_)) => CloseReason::ProtocolError,
        Err(Error::Timeout(_)) => CloseReason::Timeout,
        Err(Error::Io(_)) => CloseReason::IoError,
        Err(_) => CloseReason::UsageError,
    });
    if let (Some(m), Err(e)) = (metrics, &outcome) {
        m.error(e);
    }
    match &outcome {
        Ok(Closed::Quit) => tracing::debug!("connection closed: the MTA quit"),
        Ok(Closed::Eof) => tracing::debug!("connection closed by the MTA"),
        Ok(Closed::PeerGone(stage)) => tracing::warn!(
            stage,
            "connection closed by the MTA while the {stage} callback ran (it stopped waiting); callback abandoned"
        ),
        Ok(Closed::Stopped) => {
            tracing::info!("connection closed: stopped (the server's drain deadline passed)")
        }
        Err(Error::Protocol(e)) => {
            tracing::warn!(reason = %e, "connection closed: protocol error from the MTA: {e}")
        }
        Err(Error::Timeout(p)) => {
            tracing::warn!(phase = %p, "connection closed: the MTA was silent too long in the {p} phase (or did not read our replies)")
        }
        Err(Error::Io(e)) => tracing::info!(reason = %e, "connection closed: I/O error: {e}"),
        Err(e) => tracing::warn!(reason = %e, "connection closed: {e}"),
    }
    conn.end_unfinished_message().await;
    conn.call_close().await;
    outcome.map(|_| ())
}

enum Closed {
    /// The MTA sent QUIT.
    Quit,
    /// The MTA closed the connection while the milter waited for it.
    Eof,
    /// The MTA closed the connection while a callback owed it an answer.
    PeerGone(&'static str),
    /// [`ConnectionConfig::shutdown`] was triggered.
    Stopped,
}

/// What [`Conn::dispatch`] leaves the loop to do.
enum Flow {
    Go,
    End(Closed),
}

/// How a supervised callback ended.
enum Ran<T> {
    /// It returned.
    Done(T),
    /// Its budget ran out; the future was dropped.
    OverBudget,
    /// The MTA closed the connection while it owed the MTA an answer; dropped.
    PeerGone,
    /// The connection was told to stop; dropped.
    Stopped,
}

/// Most bytes read ahead from the MTA while a callback runs (the MTA may pipeline
/// commands after a no-reply stage); reading pauses there until the callback is done.
const SPARE_CAP: usize = 4 * READ_CHUNK;

/// What [`supervise`] watches besides the callback.
struct Watch<'a, R> {
    rd: &'a mut R,
    /// Bytes read while the callback ran, for the session once it is done.
    spare: &'a mut BytesMut,
    /// Set once the MTA's side reached EOF.
    eof: &'a mut bool,
    /// The callback owes the MTA an answer: EOF then means the MTA gave up.
    reply_due: bool,
    budget: Duration,
    stop: &'a ShutdownHandle,
}

/// Runs `fut` under the budget, watching the socket and the stop signal; with `progress`,
/// sends PROGRESS every interval meanwhile (each restarts the MTA's timer).
///
/// The PROGRESS frame is encoded here rather than through the session, which the
/// handler's context borrows while `eom` runs; PROGRESS is always valid while end of
/// message awaits its answer, and nothing else is queued then.
async fn supervise<Fut, R, W>(
    fut: Fut,
    watch: Watch<'_, R>,
    progress: Option<(&mut W, Duration)>,
) -> Result<Ran<Fut::Output>, Error>
where
    Fut: Future,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut fut = std::pin::pin!(fut);
    // Most callbacks finish at once: no timer, no watch for those.
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(v) = first {
        return Ok(Ran::Done(v));
    }
    // The rest is boxed: its timers and select would otherwise widen every connection's
    // task, idle ones included, by their size (PROFILE-library.md).
    Box::pin(supervise_pending(fut, watch, progress)).await
}

/// [`supervise`] once the callback did not finish at its first poll.
async fn supervise_pending<Fut, R, W>(
    mut fut: std::pin::Pin<&mut Fut>,
    watch: Watch<'_, R>,
    mut progress: Option<(&mut W, Duration)>,
) -> Result<Ran<Fut::Output>, Error>
where
    Fut: Future,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Watch {
        rd,
        spare,
        eof,
        reply_due,
        budget,
        stop,
    } = watch;
    let deadline = Instant::now().checked_add(budget);
    let over = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
    let mut over = std::pin::pin!(over);
    let every = progress
        .as_ref()
        .map_or(Duration::from_secs(3600), |(_, e)| {
            (*e).max(Duration::from_millis(10))
        });
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            v = &mut fut => return Ok(Ran::Done(v)),
            _ = stop.wait() => return Ok(Ran::Stopped),
            _ = &mut over, if deadline.is_some() => return Ok(Ran::OverBudget),
            r = rd.read_buf(&mut *spare), if !*eof && spare.len() < SPARE_CAP => {
                if r? == 0 {
                    *eof = true;
                    if reply_due {
                        return Ok(Ran::PeerGone);
                    }
                }
            }
            _ = tick.tick(), if progress.is_some() => {
                if let Some((wr, _)) = progress.as_mut() {
                    let mut frame = BytesMut::with_capacity(5);
                    Reply::Progress.encode(&mut frame);
                    wr.write_all(&frame).await?;
                    wr.flush().await?;
                    tracing::trace!("sent PROGRESS while eom runs");
                }
            }
        }
    }
}

struct Conn<'s, M> {
    session: MilterSession,
    milter: M,
    message: u64,
    /// A message has started (an event of MAIL onward reached the handler) and has not
    /// yet ended with `eom` returning or with `abort`.
    in_message: bool,
    /// The handler's `eom` returned for the current message: it owes no `abort`.
    eom_done: bool,
    id: u64,
    span: &'s tracing::Span,
    progress_every: Duration,
    budget: Duration,
    timeout_verdict: &'s Verdict,
    stop: &'s ShutdownHandle,
    /// Bytes read while a callback ran, not yet handed to the session.
    spare: BytesMut,
    /// The MTA's side reached EOF (seen while a callback ran).
    peer_eof: bool,
    /// The session's read buffer is a fresh [`IDLE_READ`] one (see [`make_room`]).
    small_read: bool,
    metrics: Option<&'s ServerMetrics>,
    /// Bounds each write of replies (the per-phase waits).
    write_timeouts: Timeouts,
}

/// Builds the handler's context from the connection's parts (a macro, because the context
/// borrows the session while the handler borrows itself mutably).
macro_rules! ctx {
    ($c:expr) => {
        Context {
            macros: $c.session.macros(),
            negotiated: $c.session.negotiated(),
            connect_info: $c.session.connect_info(),
            helo: $c.session.helo(),
            connection_id: $c.id,
            message: $c.message,
            span: $c.span,
        }
    };
}

/// Runs one verdict callback of the handler under [`supervise`] (no PROGRESS).
macro_rules! supervised {
    ($c:expr, $rd:expr, $call:ident ( $($arg:expr),* )) => {{
        let reply_due = $c.session.reply_due();
        let ctx = ctx!($c);
        let fut = $c.milter.$call(&ctx, $($arg),*);
        let watch = Watch {
            rd: $rd,
            spare: &mut $c.spare,
            eof: &mut $c.peer_eof,
            reply_due,
            budget: $c.budget,
            stop: $c.stop,
        };
        supervise(fut, watch, None::<(&mut tokio::io::Sink, Duration)>).await?
    }};
}

impl<M: Milter> Conn<'_, M> {
    /// Writes the session's pending replies, bounded by the phase's wait: a peer that
    /// stops reading its replies (the socket buffer full) is gone like a silent one, and
    /// its slot is freed instead of held for ever.
    async fn write_out<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), Error> {
        let phase = self.session.phase();
        let limit = self.write_timeouts.for_phase(phase);
        match tokio::time::timeout(limit, write_batch(wr, self.session.output())).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::Timeout(phase)),
        }
    }

    async fn run<R, W, F>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        factory: &F,
        config: &ConnectionConfig,
    ) -> Result<Closed, Error>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
        F: Fn() -> M + Send + Sync,
    {
        let negotiation_end = Instant::now().checked_add(config.timeouts.negotiation);
        let stop = &config.shutdown;
        // One waiter for the connection's life, not one per read: registering and
        // unregistering it locks the token shared by every connection (seen in the C=64
        // profile, tests/bench/PROFILE-library.md).
        let mut stopped = std::pin::pin!(stop.wait());
        // One timer for all the connection's waits for the MTA, armed once and moved only
        // when a wait must end sooner than it fires; when it fires early (the MTA was heard
        // from since) it is re-armed for the current wait. Arming a timer per read showed
        // as ~4.5 % of the daemon's CPU at concurrency 1 (PROFILE-library.md).
        let mut timer = std::pin::pin!(tokio::time::sleep_until(far_future()));
        loop {
            while let Some(event) = self.session.poll_event()? {
                // Boxed: the states of a command being handled (the handler's callback
                // future, end of message) would otherwise size every connection's task,
                // idle ones included (1,896 -> ~1,400 bytes; one small allocation per
                // command, from the thread's cache). PROFILE-library.md.
                let flow = Box::pin(self.dispatch(event, rd, wr, factory)).await?;
                if !self.spare.is_empty() {
                    // Read ahead while the callback ran: the session's, in order.
                    self.session.read_buf().extend_from_slice(&self.spare);
                    self.spare.clear();
                }
                match flow {
                    Flow::Go => {}
                    Flow::End(Closed::PeerGone(stage)) => return Ok(Closed::PeerGone(stage)),
                    Flow::End(closed) => {
                        self.write_out(wr).await?;
                        return Ok(closed);
                    }
                }
            }
            self.write_out(wr).await?;
            if self.session.is_closed() {
                return Ok(Closed::Quit);
            }
            if stop.is_shutting_down() {
                return Ok(Closed::Stopped);
            }
            if self.peer_eof {
                self.session.eof()?;
                return Ok(Closed::Eof);
            }
            let phase = self.session.phase();
            let mut limit = config.timeouts.for_phase(phase);
            if let (Phase::Negotiation, Some(end)) = (phase, negotiation_end) {
                // One deadline from accept, not one per read: a peer dribbling a byte at a
                // time would otherwise hold its slot for ever.
                limit = limit.min(end.saturating_duration_since(Instant::now()));
            }
            make_room(self.session.read_buf(), phase, &mut self.small_read);
            let buf = self.session.read_buf();
            let deadline = Instant::now().checked_add(limit).unwrap_or_else(far_future);
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            let n = loop {
                tokio::select! {
                    // Cancel-safe: a read not completed here read nothing.
                    r = rd.read_buf(&mut *buf) => break r?,
                    _ = &mut timer => {
                        if Instant::now() >= deadline {
                            return Err(Error::Timeout(phase));
                        }
                        timer.as_mut().reset(deadline);
                    }
                    _ = &mut stopped => return Ok(Closed::Stopped),
                }
            };
            if n == 0 {
                self.session.eof()?;
                return Ok(Closed::Eof);
            }
        }
    }

    /// Handles one event.
    async fn dispatch<R, W, F>(
        &mut self,
        event: Event,
        rd: &mut R,
        wr: &mut W,
        factory: &F,
    ) -> Result<Flow, Error>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
        F: Fn() -> M + Send + Sync,
    {
        let message_event = matches!(
            event,
            Event::Mail(_)
                | Event::Rcpt(_)
                | Event::Data
                | Event::Header { .. }
                | Event::EndOfHeaders
                | Event::Body(_)
                | Event::EndOfMessage(_)
        );
        if message_event && !self.in_message {
            self.message += 1;
            self.in_message = true;
            self.eom_done = false;
            if let Some(m) = self.metrics {
                m.message_started();
            }
        }
        let (stage, ran) = match event {
            Event::Negotiate(offer) => {
                let request = self.milter.negotiate(&offer);
                let n = self
                    .session
                    .negotiate(&request)
                    .map_err(ProtocolError::Negotiation)?;
                tracing::debug!(
                    version = n.version,
                    actions = ?n.actions,
                    protocol = ?n.protocol,
                    "negotiated"
                );
                return Ok(Flow::Go);
            }
            Event::Connect(info) => ("connect", supervised!(self, rd, connect(&info))),
            Event::Helo(helo) => ("helo", supervised!(self, rd, helo(helo))),
            Event::Mail(env) => ("mail", supervised!(self, rd, mail(&env))),
            Event::Rcpt(env) => ("rcpt", supervised!(self, rd, rcpt(&env))),
            Event::Data => ("data", supervised!(self, rd, data())),
            Event::Header { name, value } => ("header", supervised!(self, rd, header(name, value))),
            Event::EndOfHeaders => ("eoh", supervised!(self, rd, eoh())),
            Event::Body(chunk) => ("body", supervised!(self, rd, body(chunk))),
            Event::EndOfMessage(chunk) => ("eom", self.end_of_message(chunk, rd, wr).await?),
            Event::Unknown(line) => ("unknown", supervised!(self, rd, unknown(line))),
            Event::Abort => {
                self.end_unfinished_message().await;
                return Ok(Flow::Go);
            }
            Event::Quit => return Ok(Flow::End(Closed::Quit)),
            Event::QuitNoClose => {
                // One SMTP session ended, another follows on this milter connection: the
                // next session gets a fresh handler, as if newly connected.
                self.end_unfinished_message().await;
                self.call_close().await;
                self.milter = factory();
                return Ok(Flow::Go);
            }
        };
        let verdict = match ran {
            Ran::Done(v) => v,
            Ran::OverBudget => {
                tracing::warn!(
                    stage,
                    budget = ?self.budget,
                    verdict = self.timeout_verdict.name(),
                    "handler's {stage} callback ran out of its time budget; abandoned, answering {}",
                    self.timeout_verdict.name()
                );
                self.timeout_verdict.clone()
            }
            Ran::PeerGone => return Ok(Flow::End(Closed::PeerGone(stage))),
            Ran::Stopped => {
                tracing::warn!(
                    stage,
                    verdict = self.timeout_verdict.name(),
                    "drain deadline passed while the {stage} callback ran; abandoned, answering {}",
                    self.timeout_verdict.name()
                );
                if self.session.reply_due() {
                    self.answer(stage, self.timeout_verdict.clone())?;
                }
                return Ok(Flow::End(Closed::Stopped));
            }
        };
        self.answer(stage, verdict)?;
        if !self.session.in_transaction() {
            // The verdict ended the message (at end of message, or early: a reject at
            // MAIL, an accept at RCPT...). Unless `eom` returned, the handler hears of it
            // through `abort`, now: the MTA's own ABORT, if it sends one, comes outside a
            // message and is absorbed by the session.
            self.end_unfinished_message().await;
        }
        Ok(Flow::Go)
    }

    /// Runs `eom` with PROGRESS ticking under the budget, then queues its modifications;
    /// the verdict, or why there is none.
    async fn end_of_message<R, W>(
        &mut self,
        chunk: Bytes,
        rd: &mut R,
        wr: &mut W,
    ) -> Result<Ran<Verdict>, Error>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        if !chunk.is_empty() {
            // libmilter hands data carried by end of message to the body callback first.
            match supervised!(self, rd, body(chunk)) {
                Ran::Done(Verdict::Continue | Verdict::Skip) => {}
                other => return Ok(other),
            }
        }
        self.write_out(wr).await?;
        let allowed = self
            .session
            .negotiated()
            .map(|n| n.actions)
            .unwrap_or(Actions::empty());
        let mut actions = EomActions::new(allowed);
        let started = Instant::now();
        let ran = {
            let ctx = ctx!(self);
            let fut = self.milter.eom(&ctx, &mut actions);
            let watch = Watch {
                rd,
                spare: &mut self.spare,
                eof: &mut self.peer_eof,
                reply_due: true,
                budget: self.budget,
                stop: self.stop,
            };
            supervise(fut, watch, Some((&mut *wr, self.progress_every))).await?
        };
        if let Some(m) = self.metrics {
            m.eom_took(started.elapsed());
        }
        let verdict = match ran {
            Ran::Done(v) => v,
            // The handler did not finish: what it recorded is not sent.
            other => return Ok(other),
        };
        self.eom_done = true;
        for m in actions.into_modifications() {
            let name = m.name();
            if let Err(e) = self.session.modify(m) {
                tracing::warn!(
                    modification = name,
                    error = %e,
                    "handler modification refused; answering tempfail"
                );
                return Ok(Ran::Done(Verdict::Tempfail));
            }
        }
        Ok(Ran::Done(verdict))
    }

    /// Queues the handler's verdict; a verdict the protocol refuses becomes a logged
    /// tempfail where an answer is due, so the stream stays in step.
    fn answer(&mut self, stage: &'static str, verdict: Verdict) -> Result<(), Error> {
        let name = verdict.name();
        let kind = verdict_kind(&verdict);
        let Err(e) = self.session.reply(verdict) else {
            tracing::trace!(stage, verdict = name, "answered");
            if let Some(m) = self.metrics {
                m.answered(stage_index(stage), kind);
            }
            return Ok(());
        };
        if !self.session.reply_due() {
            tracing::warn!(
                stage,
                verdict = name,
                error = %e,
                "handler verdict dropped: no reply is due at this stage"
            );
            return Ok(());
        }
        tracing::warn!(
            stage,
            verdict = name,
            error = %e,
            "handler verdict refused; answering tempfail"
        );
        self.session
            .reply(Verdict::Tempfail)
            .map_err(|e: UsageError| Error::Usage(e))?;
        if let Some(m) = self.metrics {
            m.answered(stage_index(stage), verdict_kind(&Verdict::Tempfail));
        }
        Ok(())
    }

    /// Ends the current message for the handler: `abort`, unless no message is under way
    /// or its `eom` returned. So each message ends with exactly one of the two.
    async fn end_unfinished_message(&mut self) {
        if self.in_message && !self.eom_done {
            self.call_abort().await;
        }
        self.in_message = false;
    }

    async fn call_abort(&mut self) {
        let ctx = ctx!(self);
        let fut = self.milter.abort(&ctx);
        if tokio::time::timeout(self.budget, fut).await.is_err() {
            tracing::warn!(budget = ?self.budget, "handler's abort callback ran out of its time budget; abandoned");
        }
    }

    async fn call_close(&mut self) {
        let ctx = ctx!(self);
        let fut = self.milter.close(&ctx);
        if tokio::time::timeout(self.budget, fut).await.is_err() {
            tracing::warn!(budget = ?self.budget, "handler's close callback ran out of its time budget; abandoned");
        }
    }
}

/// A deadline beyond any wait (about 30 years, as tokio's own far future).
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or(now)
}

/// Makes room in the session's read buffer for the next read in `phase`.
///
/// Inside a message: at least [`READ_CHUNK`] free. Between messages and while
/// negotiating, with nothing left over: a fresh [`IDLE_READ`] buffer, unless it already is
/// one, instead of keeping (or reserving) a large one for a wait that may last hours. The
/// old buffer's space is freed once the frames sliced from it are dropped.
fn make_room(buf: &mut BytesMut, phase: Phase, small: &mut bool) {
    let waiting = matches!(phase, Phase::Negotiation | Phase::Idle);
    if waiting && buf.is_empty() && (!*small || buf.capacity() < IDLE_READ / 4) {
        *buf = BytesMut::with_capacity(IDLE_READ);
        *small = true;
    } else if !waiting && buf.capacity() - buf.len() < READ_CHUNK {
        buf.reserve(READ_CHUNK);
        *small = false;
    } else if waiting && buf.capacity() - buf.len() < IDLE_READ / 4 {
        // A frame larger than the small buffer is arriving: let it grow (doubling).
        buf.reserve(buf.len().max(IDLE_READ));
    }
}

/// Writes everything queued in ONE write (the MTA reads a batch of modifications and the
/// verdict together), then clears it.
async fn write_batch<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await?;
    wr.flush().await?;
    if out.capacity() > WRITE_KEEP {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_holds_a_small_read_buffer_and_a_message_a_large_one() {
        // Between messages, a large buffer left from the last message is let go.
        let mut buf = BytesMut::with_capacity(4 * READ_CHUNK);
        let mut small = false;
        make_room(&mut buf, Phase::Idle, &mut small);
        assert!(small);
        assert!(buf.capacity() >= IDLE_READ && buf.capacity() < READ_CHUNK);
        // ...and kept while it is the small one.
        let ptr = buf.as_ptr();
        make_room(&mut buf, Phase::Negotiation, &mut small);
        assert_eq!(buf.as_ptr(), ptr);
        // Inside a message: room for a full chunk.
        make_room(&mut buf, Phase::Content, &mut small);
        assert!(!small);
        assert!(buf.capacity() - buf.len() >= READ_CHUNK);
    }

    #[test]
    fn a_large_frame_arriving_while_idle_grows_the_buffer_and_keeps_its_bytes() {
        let mut buf = BytesMut::new();
        let mut small = false;
        make_room(&mut buf, Phase::Idle, &mut small);
        let partial = vec![b'x'; buf.capacity() - 10];
        buf.extend_from_slice(&partial);
        make_room(&mut buf, Phase::Idle, &mut small);
        assert_eq!(&buf[..], &partial[..]);
        assert!(buf.capacity() - buf.len() >= IDLE_READ / 4);
    }
}
