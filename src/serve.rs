//! `leadrelay serve`: the HTTP server and the worker in one process.
//!
//! `Application::build` binds the address (port 0 in tests), checks the
//! database schema, and starts everything; `shutdown` stops claiming, lets the
//! requests in flight finish (up to `SHUTDOWN_GRACE`), and gives back claimed
//! jobs that were not sent yet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::http;
use crate::providers::http_client;
use crate::providers::mobizon::MobizonClient;
use crate::providers::resend::ResendClient;
use crate::store::queue::Queue;
use crate::store::{self, migrate};
use crate::worker::Worker;
use crate::worker::listener::{self, ListenerState};
use crate::worker::wakeups::Wakeups;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] store::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the database schema is not ready: {0}")]
    Schema(String),
}

pub struct Application {
    addr: SocketAddr,
    cancel: CancellationToken,
    http_cancel: CancellationToken,
    worker_tasks: TaskTracker,
    other_tasks: TaskTracker,
    shutdown_grace: Duration,
    pub listener: Arc<ListenerState>,
}

impl Application {
    /// Connects (checking the schema), binds the address, then starts the
    /// listener, the worker, the SMS status poll and the HTTP server.
    pub async fn build(config: ServeConfig) -> Result<Application, ServeError> {
        let Pools {
            pool,
            worker_pool,
            tracking_pool,
            connections: pooled,
        } = pools(&config).await?;
        // Templates are checked by the worker's first sweep, which logs each
        // problem: a marketer's edit must never stop the webhooks, the
        // console or the other channels (only its own jobs fail).
        let (tcp, addr) = bind(config.listen_addr).await?;
        let unsubscribe = unsubscribe_links(&config, &pool).await?;
        let wakeups = Wakeups::new();
        let listener_state = Arc::new(ListenerState::default());
        let worker_tasks = TaskTracker::new();
        let other_tasks = TaskTracker::new();
        let worker = Arc::new(new_worker(
            &config,
            (worker_pool, tracking_pool),
            unsubscribe.clone(),
            Arc::clone(&wakeups),
            worker_tasks.clone(),
        ));

        let cancel = CancellationToken::new();
        let http_cancel = CancellationToken::new();
        other_tasks.spawn(listener::run(
            config.database_url.clone(),
            Arc::clone(&wakeups),
            Arc::clone(&listener_state),
            config.worker.sweep_interval.min(Duration::from_secs(30)),
            cancel.clone(),
        ));
        worker.start(&cancel);
        if let Some(every) = config.mobizon_poll_interval {
            let poller = Arc::clone(&worker);
            let token = cancel.clone();
            other_tasks.spawn(async move { poller.sms_status_loop(every, token).await });
        }
        crate::http::metrics::install();
        other_tasks.spawn(crate::http::metrics::gauges_loop(
            pool.clone(),
            cancel.clone(),
        ));
        let state = app_state(&config, pool, Arc::clone(&listener_state), &worker);
        // Both pools (the tracking pool may be the same) and every HTTP
        // connection share the process's descriptors.
        let file_limit = http::connections::file_limit();
        let slots = Arc::new(http::connections::Slots::new(
            http::connections::max_connections(file_limit, pooled),
        ));
        tracing::info!(
            max_connections = slots.max(),
            file_limit,
            "HTTP/1 connections capped below the file limit"
        );
        if let Some(metrics_addr) = config.metrics_addr {
            let (metrics_tcp, bound) = bind(metrics_addr).await?;
            tracing::info!(addr = %bound, "metrics served on their own address");
            other_tasks.spawn(serve_http(
                metrics_tcp,
                http::metrics_router(state.clone()),
                Arc::clone(&slots),
                http_cancel.clone(),
            ));
        }
        let app = http::router(state, config.metrics_addr.is_none());
        other_tasks.spawn(serve_http(tcp, app, slots, http_cancel.clone()));
        tracing::info!(%addr, worker_id = worker.queue.worker_id(), "leadrelay serving");
        Ok(Application {
            addr,
            cancel,
            http_cancel,
            worker_tasks,
            other_tasks,
            shutdown_grace: config.worker.shutdown_grace,
            listener: listener_state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops claiming, waits for requests in flight (bounded), then stops HTTP.
    pub async fn shutdown(self) {
        tracing::info!("stopping: no new claims; waiting for requests in flight");
        self.cancel.cancel();
        self.worker_tasks.close();
        if tokio::time::timeout(self.shutdown_grace, self.worker_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = self.shutdown_grace.as_secs_f64(),
                "requests still in flight after the grace period; their leases will expire and they will be retried"
            );
        }
        self.http_cancel.cancel();
        self.other_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.other_tasks.wait()).await;
        tracing::info!("stopped");
    }

    pub async fn run_until(self, signals: ShutdownSignals) {
        signals.wait().await;
        self.shutdown().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), ServeError> {
    let bind_error = |source| ServeError::Bind { addr, source };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = tcp.local_addr().map_err(bind_error)?;
    Ok((tcp, local))
}

/// The database pools of `serve`.
struct Pools {
    /// The HTTP side's: webhooks, the console, metrics.
    pool: deadpool_postgres::Pool,
    /// The worker's, whose sessions keep generic plans
    /// (`store::WORKER_SESSION`); the console's searches do not.
    worker_pool: deadpool_postgres::Pool,
    /// The `lead_tracking` dashboard's database (the worker's pool when it
    /// is the same database).
    tracking_pool: deadpool_postgres::Pool,
    /// The most connections they may hold.
    connections: u64,
}

async fn pools(config: &ServeConfig) -> Result<Pools, ServeError> {
    let pool_size = config.worker.concurrency + 8;
    let pool = store::pool(config.database_url.expose(), pool_size).await?;
    check_schema(&pool).await?;
    let worker_pool_size = config.worker.concurrency * 2 + 6;
    let worker_pool = store::worker_pool(config.database_url.expose(), worker_pool_size).await?;
    let tracking_pool = match &config.lead_tracking_database_url {
        Some(url) => store::pool(url.expose(), config.worker.concurrency + 2).await?,
        None => worker_pool.clone(),
    };
    Ok(Pools {
        pool,
        worker_pool,
        tracking_pool,
        connections: (pool_size + worker_pool_size + config.worker.concurrency + 2) as u64,
    })
}

/// The unsubscribe links' key (UNSUBSCRIBE_SECRET, else the database's)
/// and base (PUBLIC_URL); without PUBLIC_URL emails go without the link,
/// said once here and by `doctor`.
async fn unsubscribe_links(
    config: &ServeConfig,
    pool: &deadpool_postgres::Pool,
) -> Result<crate::messages::unsubscribe::Links, ServeError> {
    let client = pool
        .get()
        .await
        .map_err(|e| ServeError::Schema(format!("no connection for the unsubscribe key: {e}")))?;
    let key = store::suppressions::unsubscribe_key(&client, config.unsubscribe_secret.as_ref())
        .await
        .map_err(|e| ServeError::Schema(format!("the unsubscribe key: {}", store::describe(&e))))?
        .ok_or_else(|| {
            ServeError::Schema("leadrelay_settings has no row: run `leadrelay migrate`".into())
        })?;
    let links =
        crate::messages::unsubscribe::Links::new(key.as_bytes(), config.public_url.as_deref());
    if config.public_url.is_none() {
        tracing::warn!(
            "PUBLIC_URL is not set: emails go without List-Unsubscribe and unsubscribe_url is empty"
        );
    }
    Ok(links)
}

/// The worker with its clients, under an id unique to this process.
fn new_worker(
    config: &ServeConfig,
    (pool, tracking_pool): (deadpool_postgres::Pool, deadpool_postgres::Pool),
    unsubscribe: crate::messages::unsubscribe::Links,
    wakeups: Arc<Wakeups>,
    tasks: TaskTracker,
) -> Worker {
    let http = http_client(config.worker.provider_timeout);
    let worker_id = format!(
        "{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    );
    let templates = crate::worker::rendering::TemplateCache::new(pool.clone());
    let queue = Queue::new(pool, worker_id).with_product_url(&config.product_url);
    Worker {
        templates,
        sent_batches: crate::worker::sent_batches::SentBatches::start(queue.clone()),
        queue,
        tracking_pool,
        resend: Arc::new(ResendClient::new(
            http.clone(),
            &config.resend.api_url,
            config.resend.api_key.clone(),
            config.resend.max_rps,
        )),
        email_from: config.resend.from.clone(),
        email_batch_size: config.resend.batch_size,
        mobizon: Arc::new(mobizon_client(config, http)),
        product_url: config.product_url.clone(),
        unsubscribe,
        settings: config.worker.clone(),
        wakeups,
        tasks,
    }
}

fn mobizon_client(config: &ServeConfig, http: reqwest::Client) -> MobizonClient {
    MobizonClient::new(
        http,
        &config.mobizon.api_url,
        config.mobizon.api_key.clone(),
        config.mobizon.from.clone(),
        config.mobizon.max_rps,
    )
}

fn app_state(
    config: &ServeConfig,
    pool: deadpool_postgres::Pool,
    listener: Arc<ListenerState>,
    worker: &Worker,
) -> http::AppState {
    // the worker's own clients: one pacer per provider in the process
    let providers = crate::reconcile::Providers {
        resend: Arc::clone(&worker.resend),
        mobizon: Arc::clone(&worker.mobizon),
    };
    http::AppState {
        events: crate::ingest::event_batches::EventBatches::start(pool.clone()),
        pool,
        listener,
        resend_key: config.resend_webhook_key.clone(),
        mobizon_token: config.mobizon_webhook_token.clone(),
        mobizon_secret: config.mobizon_webhook_secret.clone(),
        mobizon: Arc::clone(&providers.mobizon),
        providers,
        admin_token: config.admin_token.clone(),
        dev_outbox: config.dev_outbox.clone(),
        product_url: config.product_url.clone(),
        unsubscribe: worker.unsubscribe.clone(),
        tracking_pool: worker.tracking_pool.clone(),
        console: http::Console::new(config.console.clone(), &config.admin_token),
    }
}

/// How long a client may take to send a request's headers, and to start
/// the next request on a kept-alive connection: a slow or idle client cannot
/// hold connections open (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, its body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `stop` is cancelled, then lets requests in progress finish
/// (for up to 5 s). hyper's own connection loop rather than `axum::serve`,
/// which has no header-read timeout: HTTP/1 only, at most `slots.max()`
/// connections (see `http::connections`).
async fn serve_http(
    tcp: tokio::net::TcpListener,
    app: axum::Router,
    slots: Arc<http::connections::Slots>,
    stop: CancellationToken,
) {
    use http::connections::Admitted;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;
    let app = app.layer(axum::middleware::from_fn(request_timeout));
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (admitted, slot) = slots.admit();
                let Some((id, connection)) = slot else {
                    tracing::warn!(max = slots.max(), "every HTTP connection is answering a request: one refused");
                    continue;
                };
                if admitted == Admitted::Evicted {
                    tracing::debug!(max = slots.max(), "at the connection cap: the oldest idle connection gave way");
                }
                let app = app.clone();
                let tracked = Arc::clone(&connection);
                // the console's rate limit and audit need the peer's address
                let service = TowerToHyperService::new(tower::service_fn(
                    move |mut request: axum::http::Request<_>| {
                        let in_flight = tracked.request();
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let app = app.clone();
                        async move {
                            let response = app.oneshot(request).await;
                            drop(in_flight);
                            response
                        }
                    },
                ));
                let served = graceful.watch(
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned(),
                );
                let slots = Arc::clone(&slots);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = served => {}
                        _ = connection.evicted() => {}
                    }
                    slots.release(id);
                });
            }
        }
    }
    drop(tcp);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after 5 s; closing them");
    }
}

/// A request (its body included) that takes longer than `REQUEST_TIMEOUT`
/// is answered 408 and its connection freed.
async fn request_timeout(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "the request took too long",
        )
            .into_response(),
    }
}

/// Refuses to start against a database that lacks the migrations this binary
/// was built with: its statements would fail on every job.
async fn check_schema(pool: &deadpool_postgres::Pool) -> Result<(), ServeError> {
    let client = pool
        .get()
        .await
        .map_err(|e| store::DbError::Connect(e.to_string()))?;
    let newest = migrate::embedded()
        .map_err(|e| ServeError::Schema(e.to_string()))?
        .last()
        .map(|m| m.version.clone())
        .unwrap_or_default();
    let applied = migrate::applied_versions(&**client)
        .await
        .map_err(|e| ServeError::Schema(e.to_string()))?
        .is_some_and(|versions| versions.contains(&newest));
    if !applied {
        return Err(ServeError::Schema(format!(
            "migration {newest} is not applied: run `leadrelay migrate` first (it also recognises files exported with `leadrelay migrations export` and pushed by the Supabase CLI)"
        )));
    }
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "leadrelay".into())
}

/// Ctrl-C in a terminal, SIGTERM from a service manager or `timeout`, SIGHUP
/// when the terminal closes. The handlers are installed by `install`, before
/// anything starts: a signal that comes while the service is still starting
/// (its worker already claiming) is then a clean stop, not a kill.
pub struct ShutdownSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    pub fn install() -> ShutdownSignals {
        use tokio::signal::unix::{SignalKind, signal};
        ShutdownSignals {
            terminate: signal(SignalKind::terminate()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Waits for the first of them.
    pub async fn wait(mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let name = tokio::select! {
            _ = next(&mut self.terminate) => "SIGTERM",
            _ = next(&mut self.hangup) => "SIGHUP",
            _ = next(&mut self.interrupt) => "SIGINT",
        };
        tracing::warn!(signal = name, "stopping");
    }
}
