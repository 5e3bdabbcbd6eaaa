use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = orch::cli::parse();
    // libgit2 starts OpenSSL eagerly, and OpenSSL parses the CA bundle (~30 ms of every
    // `orch plan` and `orch ci`), although these commands make no TLS connection: their git
    // work is local, and steps get their own environment. They point OpenSSL at an empty
    // bundle instead. (`orch serve` clones over https and keeps the bundle.)
    if matches!(cli.command, orch::cli::Command::Plan(_) | orch::cli::Command::Ci(_)) {
        // SAFETY: no other thread exists yet (the runtime starts below), so nothing can read
        // the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("SSL_CERT_FILE", "/dev/null");
        }
    }
    // Diagnostics for developers (ORCH_LOG=debug); what users see goes through reporters.
    // The server's log is its user interface: info by default.
    let default = if matches!(cli.command, orch::cli::Command::Serve(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("ORCH_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
                .unwrap_or_else(|| default.into()),
        )
        .with_writer(std::io::stderr)
        // A file or the journal gets plain text, not colour codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(orch::error::exit::INFRA);
        }
    };
    ExitCode::from(runtime.block_on(orch::cli::run(cli)))
}
