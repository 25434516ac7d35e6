//! What every integration test stands on: `harness` (the throwaway cluster
//! with pg_cron, the migrated templates under each privilege model, a
//! database per test, the incident's leads) and `app` (the stand-in
//! providers, answering as `leadrelay::cli::dev::books` has them, the
//! service running on them in-process or as the real binary, `TestApp` for
//! the common preamble).

pub mod app;
pub mod harness;
