//! spam-milter: the Rspamd bridge. Not built yet; this binary only says so, so that nobody
//! mistakes it for a working daemon.

fn main() {
    eprintln!("spam-milter is not implemented yet; see the project's issues");
    std::process::exit(2);
}
