//! The same no-op on indymilter 0.3 (GPL-3.0-or-later), the library benchmark's anchor:
//! every stage callback registered and continuing, accept at end of message.

use bench_milters::{Args, HEADER, Mode, Socket, parse_socket};
use clap::Parser;
use indymilter::{Actions, Callbacks, Config, ContextActions, ProtoOpts, Status};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

fn callbacks(mode: Mode, add_header: bool) -> Callbacks<()> {
    let st = match mode {
        Mode::Replied => Status::Continue,
        Mode::Nr => Status::Noreply,
    };
    let nr = ProtoOpts::NOREPLY_CONNECT
        | ProtoOpts::NOREPLY_HELO
        | ProtoOpts::NOREPLY_MAIL
        | ProtoOpts::NOREPLY_RCPT
        | ProtoOpts::NOREPLY_DATA
        | ProtoOpts::NOREPLY_HEADER
        | ProtoOpts::NOREPLY_EOH
        | ProtoOpts::NOREPLY_BODY
        | ProtoOpts::NOREPLY_UNKNOWN;
    Callbacks::<()>::new()
        .on_negotiate(move |cx, _actions, offered| {
            Box::pin(async move {
                if mode == Mode::Nr {
                    cx.requested_opts |= nr & offered;
                }
                if add_header {
                    cx.requested_actions |= Actions::ADD_HEADER;
                }
                Status::Continue
            })
        })
        .on_connect(move |_, _, _| Box::pin(async move { st }))
        .on_helo(move |_, _| Box::pin(async move { st }))
        .on_mail(move |_, _| Box::pin(async move { st }))
        .on_rcpt(move |_, _| Box::pin(async move { st }))
        .on_data(move |_| Box::pin(async move { st }))
        .on_header(move |_, _, _| Box::pin(async move { st }))
        .on_eoh(move |_| Box::pin(async move { st }))
        .on_body(move |_, _| Box::pin(async move { st }))
        .on_unknown(move |_, _| Box::pin(async move { st }))
        .on_eom(move |cx| {
            Box::pin(async move {
                if add_header && cx.actions.add_header(HEADER.0, HEADER.1).await.is_err() {
                    return Status::Tempfail;
                }
                Status::Accept
            })
        })
        .on_abort(|_| Box::pin(async { Status::Continue }))
        .on_close(|_| Box::pin(async { Status::Continue }))
}

async fn stopped() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cb = callbacks(args.mode, args.add_header);
    let config = Config {
        max_connections: args.max_connections,
        ..Default::default()
    };
    match parse_socket(&args.socket)? {
        Socket::Inet(addr) => {
            let l = TcpListener::bind(addr).await?;
            indymilter::run(l, cb, config, stopped()).await?;
        }
        Socket::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            indymilter::run(l, cb, config, stopped()).await?;
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}
