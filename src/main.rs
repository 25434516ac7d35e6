use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    leadrelay::cli::main().await
}
