//! The per-connection driver: feeds socket bytes to a [`MilterSession`], runs the handler's
//! callbacks, and writes each batch of replies in one write.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::ShutdownHandle;
use super::limits::{Limits, Timeouts};
use super::metrics::{CloseReason, ConnectionTally, ServerMetrics, stage_index, verdict_kind};
use crate::error::{Error, ProtocolError, UsageError};
use crate::handler::{Context, EomActions, Milter};
use crate::proto::flags::Actions;
use crate::proto::{Reply, Verdict};
use crate::session::milter::{Event, MilterSession, SessionConfig};

/// Smallest free space offered to each socket read, so large bodies are not read in
/// dribbles; frames themselves are bounded by [`Limits::max_frame`].
const READ_CHUNK: usize = 16 * 1024;

/// Settings of one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionConfig {
    /// Per-phase timeouts and the PROGRESS interval.
    pub timeouts: Timeouts,
    /// Frame and macro limits (`max_connections` is not used here).
    pub limits: Limits,
    /// The number logged with this connection and shown to handlers.
    pub connection_id: u64,
    /// When triggered, the connection closes as soon as no message is in flight.
    pub shutdown: ShutdownHandle,
    /// Where the connection counts itself (`None`: not counted).
    pub metrics: Option<ServerMetrics>,
}

/// Serves one accepted connection until the MTA quits, the connection fails, or a
/// shutdown finds it between messages.
///
/// A fresh handler comes from `factory` (a second one only after `QUIT_NC`). The outcome
/// is logged once, with the reason, in the current tracing span; the handler's `close` has
/// run by the time this returns. A peer's protocol error, a timeout or an I/O error ends
/// only this connection.
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
        id: config.connection_id,
        span: &span,
        progress_every: config.timeouts.progress_interval,
        metrics,
    };
    let outcome = conn.run(&mut rd, &mut wr, factory, config).await;
    tally.close(match &outcome {
        Ok(Closed::Quit) => CloseReason::Quit,
        Ok(Closed::Eof) => CloseReason::Eof,
        Ok(Closed::Shutdown) => CloseReason::Shutdown,
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
        Ok(Closed::Shutdown) => tracing::info!("connection closed: server shutting down"),
        Err(Error::Protocol(e)) => {
            tracing::warn!(reason = %e, "connection closed: protocol error from the MTA: {e}")
        }
        Err(Error::Timeout(p)) => {
            tracing::warn!(phase = %p, "connection closed: the MTA was silent too long in the {p} phase")
        }
        Err(Error::Io(e)) => tracing::info!(reason = %e, "connection closed: I/O error: {e}"),
        Err(e) => tracing::warn!(reason = %e, "connection closed: {e}"),
    }
    if conn.session.in_transaction() {
        conn.call_abort().await;
    }
    conn.call_close().await;
    outcome.map(|_| ())
}

enum Closed {
    Quit,
    Eof,
    Shutdown,
}

struct Conn<'s, M> {
    session: MilterSession,
    milter: M,
    message: u64,
    in_message: bool,
    id: u64,
    span: &'s tracing::Span,
    progress_every: Duration,
    metrics: Option<&'s ServerMetrics>,
}

/// Builds the handler's context from the connection's parts (a macro, because the context
/// borrows the session while the handler borrows itself mutably).
macro_rules! ctx {
    ($c:expr) => {
        Context::new(
            $c.session.macros(),
            $c.session.negotiated(),
            $c.session.connect_info(),
            $c.session.helo(),
            $c.id,
            $c.message,
            $c.span,
        )
    };
}

impl<M: Milter> Conn<'_, M> {
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
        let shutdown = &config.shutdown;
        loop {
            while let Some(event) = self.session.poll_event()? {
                if self.dispatch(event, wr, factory).await? {
                    write_batch(wr, self.session.output()).await?;
                    return Ok(Closed::Quit);
                }
            }
            write_batch(wr, self.session.output()).await?;
            if self.session.is_closed() {
                return Ok(Closed::Quit);
            }
            let between_messages = !self.session.in_transaction() && !self.session.reply_due();
            if between_messages && shutdown.is_shutting_down() {
                return Ok(Closed::Shutdown);
            }
            let phase = self.session.phase();
            let limit = config.timeouts.for_phase(phase);
            let buf = self.session.read_buf();
            if buf.capacity() - buf.len() < READ_CHUNK {
                buf.reserve(READ_CHUNK);
            }
            let n = tokio::select! {
                r = tokio::time::timeout(limit, rd.read_buf(buf)) => match r {
                    Err(_) => return Err(Error::Timeout(phase)),
                    Ok(r) => r?,
                },
                _ = shutdown.wait(), if between_messages => continue,
            };
            if n == 0 {
                self.session.eof()?;
                return Ok(Closed::Eof);
            }
        }
    }

    /// Handles one event; `true` when the MTA quit.
    async fn dispatch<W, F>(&mut self, event: Event, wr: &mut W, factory: &F) -> Result<bool, Error>
    where
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
            if let Some(m) = self.metrics {
                m.message_started();
            }
        }
        let (stage, verdict) = match event {
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
                return Ok(false);
            }
            Event::Connect(info) => ("connect", self.milter.connect(&ctx!(self), &info).await),
            Event::Helo(helo) => ("helo", self.milter.helo(&ctx!(self), &helo).await),
            Event::Mail(env) => ("mail", self.milter.mail(&ctx!(self), &env).await),
            Event::Rcpt(env) => ("rcpt", self.milter.rcpt(&ctx!(self), &env).await),
            Event::Data => ("data", self.milter.data(&ctx!(self)).await),
            Event::Header { name, value } => (
                "header",
                self.milter.header(&ctx!(self), &name, &value).await,
            ),
            Event::EndOfHeaders => ("eoh", self.milter.eoh(&ctx!(self)).await),
            Event::Body(chunk) => ("body", self.milter.body(&ctx!(self), &chunk).await),
            Event::EndOfMessage(chunk) => ("eom", self.end_of_message(chunk, wr).await?),
            Event::Unknown(line) => ("unknown", self.milter.unknown(&ctx!(self), &line).await),
            Event::Abort => {
                self.call_abort().await;
                self.in_message = false;
                return Ok(false);
            }
            Event::Quit => return Ok(true),
            Event::QuitNoClose => {
                // One SMTP session ended, another follows on this milter connection: the
                // next session gets a fresh handler, as if newly connected.
                self.call_close().await;
                self.milter = factory();
                self.in_message = false;
                return Ok(false);
            }
        };
        self.answer(stage, verdict)?;
        if !self.session.in_transaction() {
            self.in_message = false;
        }
        Ok(false)
    }

    /// Runs `eom` with PROGRESS ticking, then queues its modifications and verdict.
    async fn end_of_message<W>(&mut self, chunk: Bytes, wr: &mut W) -> Result<Verdict, Error>
    where
        W: AsyncWrite + Unpin + Send,
    {
        if !chunk.is_empty() {
            // libmilter hands data carried by end of message to the body callback first.
            let v = self.milter.body(&ctx!(self), &chunk).await;
            if !matches!(v, Verdict::Continue | Verdict::Skip) {
                return Ok(v);
            }
        }
        write_batch(wr, self.session.output()).await?;
        let allowed = self
            .session
            .negotiated()
            .map(|n| n.actions)
            .unwrap_or(Actions::empty());
        let mut actions = EomActions::new(allowed);
        let started = Instant::now();
        let verdict = {
            let ctx = ctx!(self);
            let fut = self.milter.eom(&ctx, &mut actions);
            with_progress(fut, wr, self.progress_every).await?
        };
        if let Some(m) = self.metrics {
            m.eom_took(started.elapsed());
        }
        for m in actions.into_modifications() {
            let name = m.name();
            if let Err(e) = self.session.modify(m) {
                tracing::warn!(
                    modification = name,
                    error = %e,
                    "handler modification refused; answering tempfail"
                );
                return Ok(Verdict::Tempfail);
            }
        }
        Ok(verdict)
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

    async fn call_abort(&mut self) {
        self.milter.abort(&ctx!(self)).await;
    }

    async fn call_close(&mut self) {
        self.milter.close(&ctx!(self)).await;
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
    out.clear();
    Ok(())
}

/// Awaits `fut`, sending PROGRESS every `every` meanwhile: each restarts the MTA's timer.
///
/// The frame is encoded here rather than through the session, which the handler's
/// context borrows while `eom` runs; PROGRESS is always valid while end of message awaits
/// its answer, and nothing else is queued then.
async fn with_progress<Fut, W>(fut: Fut, wr: &mut W, every: Duration) -> Result<Verdict, Error>
where
    Fut: Future<Output = Verdict>,
    W: AsyncWrite + Unpin,
{
    let mut fut = std::pin::pin!(fut);
    let every = every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = BytesMut::new();
    Reply::Progress.encode(&mut frame);
    loop {
        tokio::select! {
            biased;
            v = &mut fut => return Ok(v),
            _ = tick.tick() => {
                wr.write_all(&frame).await?;
                wr.flush().await?;
                tracing::trace!("sent PROGRESS while eom runs");
            }
        }
    }
}
