//! `weft serve`: startup and orderly shutdown.
//!
//! Startup: open the store (fails fast if another process holds it), start
//! the engine, bind, print the address. Shutdown on SIGTERM/SIGINT: stop
//! accepting, close every WebSocket with 1001, let every room store what it
//! was sent and snapshot, then exit, all within `--shutdown-timeout`: past
//! it the process exits even with threads stuck on a disk. The same
//! shutdown runs, ending in a non-zero exit, when the embedded store failed
//! and can only recover by a restart (see `store_health`).

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use weft_storage::{
    DocumentStore, EngineStore, RedisStore, RetentionPolicy, SledStore, WebhookOutbox,
};
use weft_sync::changes::ChangeFeed;
use weft_sync::{Clock, Rooms, SystemClock};

use crate::accept::{self, Edge};
use crate::admin_key;
use crate::admin_throttle::FailureThrottle;
use crate::app::{self, AppState};
use crate::auth::Authenticator;
use crate::limits::ConnectionLimit;
use crate::serve_config::ServeConfig;
use crate::shutdown;
use crate::store::{reported, Store, WEBHOOKS_NEED_EMBEDDED};
use crate::store_health::{self, RestartReason};
use crate::telemetry;
use crate::tls;
use crate::webhooks::{self, WebhookConfig};

/// The embedded sled store, or Redis in cluster mode. What Redis cannot do
/// (webhooks) is refused before connecting to it.
async fn open_store(config: &ServeConfig) -> anyhow::Result<Store> {
    if config.is_cluster() {
        anyhow::ensure!(config.webhook_urls.is_empty(), WEBHOOKS_NEED_EMBEDDED);
    }
    let redis = match (&config.redis, &config.redis_cluster) {
        (_, Some(urls)) => Some(RedisStore::connect_cluster(&redis_nodes(urls.expose())?).await),
        (Some(url), None) => Some(RedisStore::connect(url.expose()).await),
        (None, None) => None,
    };
    if let Some(store) = redis {
        let store = store
            .map_err(reported)?
            .with_min_replicas(config.redis_min_replicas, config.redis_replica_wait)
            .await
            .map_err(reported)?;
        store
            .check_writable()
            .await
            .map_err(reported)
            .context("Redis does not take writes")?;
        return Ok(Store::Cluster(Arc::new(store)));
    }
    anyhow::ensure!(
        config.redis_min_replicas == 0,
        "--redis-min-replicas is for cluster mode: add --redis or --redis-cluster, or drop it"
    );
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "could not create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = SledStore::open(&config.data_dir)
        .map_err(reported)?
        .with_timeout(config.storage_timeout);
    store
        .check_disk_writable()
        .await
        .map_err(reported)
        .context("the data directory is not writable")?;
    Ok(Store::Embedded(Arc::new(store)))
}

/// The node URLs of `--redis-cluster`.
fn redis_nodes(list: &str) -> anyhow::Result<Vec<String>> {
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        !nodes.is_empty(),
        "--redis-cluster names no node: give one or more redis:// URLs, comma-separated"
    );
    Ok(nodes)
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::install()?;
    let store = open_store(&config).await?;
    let webhooks = match webhook_config(&config)? {
        Some(webhooks) => {
            let outbox = store.webhook_outbox().context(WEBHOOKS_NEED_EMBEDDED)?;
            Some((webhooks, outbox))
        }
        None => None,
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    raise_open_files_limit(&config);
    let listener =
        listen(config.listen).with_context(|| format!("could not listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let running = Running::new(&config, store, webhooks)?;
    let router = app::router(running.state.clone());
    running.start_background(&config).await?;

    match (&config.redis, &config.redis_cluster) {
        (_, Some(_)) => info!("cluster mode: documents in a Redis Cluster"),
        (Some(_), None) => info!("cluster mode: documents in Redis"),
        (None, None) => info!(data_dir = %config.data_dir.display(), "store open"),
    }
    // A stable line on stdout, for scripts and tests that asked for port 0;
    // the last one weft prints.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("weft listening on {scheme}://{addr}");

    let token = running.state.shutdown.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        token.cancel();
    });
    accept::run(Edge {
        listener,
        tls,
        router,
        limits: config.edge(),
        shutdown: running.state.shutdown.clone(),
        tasks: running.state.connections.clone(),
    })
    .await;
    running.shut_down(config.shutdown_timeout).await
}

/// The engine and everything around it while weft serves: what the
/// handlers reach, and what shutdown has to finish.
struct Running {
    state: Arc<AppState>,
    rooms: Rooms,
    store: Store,
    clock: Arc<dyn Clock>,
    changes: Arc<ChangeFeed>,
    /// The webhooks and the outbox their deliveries wait in.
    webhooks: Option<(WebhookConfig, Arc<dyn WebhookOutbox>)>,
    restart: RestartReason,
}

impl Running {
    fn new(
        config: &ServeConfig,
        store: Store,
        webhooks: Option<(WebhookConfig, Arc<dyn WebhookOutbox>)>,
    ) -> anyhow::Result<Running> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let changes = Arc::new(ChangeFeed::default());
        let mut rooms = Rooms::new(store.engine(), config.engine(), clock.clone());
        if webhooks.is_some() {
            rooms = rooms.with_change_feed(changes.clone());
        }
        let state = Arc::new(AppState {
            config: config.clone(),
            auth: authenticator(config)?,
            rooms: rooms.clone(),
            admin: store.admin(rooms.clone()),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            connection_limit: ConnectionLimit::new(config.max_connections)
                .per_client(config.max_connections_per_client),
            unauthenticated_limit: ConnectionLimit::new(
                usize::try_from(config.max_pending_connections).unwrap_or(usize::MAX),
            )
            .per_client(config.max_connections_per_client),
            admin_failures: FailureThrottle::new(
                config.admin_failure_burst,
                config.admin_failure_interval,
            ),
            store_probe: store.readiness(),
        });
        Ok(Running {
            state,
            rooms,
            store,
            clock,
            changes,
            webhooks,
            restart: RestartReason::default(),
        })
    }

    /// Webhook senders, the separate metrics address, the store's health
    /// watch and snapshot pruning.
    async fn start_background(&self, config: &ServeConfig) -> anyhow::Result<()> {
        let state = &self.state;
        if let Some((webhooks, outbox)) = &self.webhooks {
            info!(urls = webhooks.urls.len(), "change webhooks on");
            webhooks::start(
                webhooks.clone(),
                self.changes.clone(),
                outbox.clone(),
                self.clock.clone(),
                &state.connections,
                state.shutdown.clone(),
            );
        }
        if let Some(addr) = config.metrics_listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen for metrics on {addr}"))?;
            let bound = listener.local_addr()?;
            info!(addr = %bound, "metrics on their own address");
            // Before the `weft listening on` line, for those that asked for port 0.
            println!("weft metrics on http://{bound}");
            let metrics =
                axum::Router::new().route("/metrics", axum::routing::get(telemetry::render));
            state.connections.spawn(accept::run(Edge {
                listener,
                tls: None,
                router: metrics,
                limits: config.edge(),
                shutdown: state.shutdown.clone(),
                tasks: state.connections.clone(),
            }));
        }
        if let Some(embedded) = self.store.embedded() {
            tokio::spawn(store_health::watch(
                embedded.clone(),
                state.shutdown.clone(),
                self.restart.clone(),
            ));
        }
        state.connections.spawn(prune_snapshots(
            self.store.engine(),
            config.retention(),
            config.prune_interval,
            self.clock.clone(),
            state.shutdown.clone(),
        ));
        Ok(())
    }

    /// After the accept loop ends: every connection closes, every room
    /// stores what it was sent, pending webhooks are queued, within
    /// `deadline` (past it the process exits anyway). An error when the
    /// store failed, for a non-zero exit.
    async fn shut_down(self, deadline: std::time::Duration) -> anyhow::Result<()> {
        let failed = self.store.embedded().and_then(SledStore::failure);
        let code = if failed.is_some() || self.restart.get().is_some() {
            1
        } else {
            0
        };
        shutdown::exit_after(deadline, code);
        // A tenth of the deadline is kept for closing the store and exiting.
        let finished = tokio::time::timeout(deadline.mul_f64(0.9), async {
            // Every connection task, and every WebSocket and event stream.
            self.state.connections.close();
            self.state.connections.wait().await;
            self.rooms.shut_down().await;
            self.store.shut_down().await;
            if let Some((webhooks, outbox)) = &self.webhooks {
                let outbox = outbox.as_ref();
                webhooks::queue_pending(webhooks, &self.changes, outbox, self.clock.as_ref()).await;
            }
        })
        .await;
        match finished {
            Ok(()) => info!("shut down cleanly"),
            Err(_) => warn!(
                ?deadline,
                "shutdown deadline passed; exiting (every accepted change is already on disk)"
            ),
        }
        if let Some(reason) = self.restart.get() {
            anyhow::bail!(
                "the store failed and cannot recover in this process ({reason}); exiting so that \
                 a supervisor restarts weft (every acknowledged change is on disk)"
            );
        }
        if let Some(reason) = self
            .store
            .embedded()
            .and_then(SledStore::failure)
            .or(failed)
        {
            anyhow::bail!(
                "stopped while the store was failing ({reason}): documents could not be \
                 snapshotted, but every acknowledged change is in the log on disk"
            );
        }
        Ok(())
    }
}

/// Binds `addr` with a listen backlog of 4096 (the kernel caps it at
/// `net.core.somaxconn`): a burst of connections waits in the kernel's queue
/// rather than having its handshakes dropped and retried a second later.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Raises the soft open-files limit to the hard one: every connection is a
/// descriptor. Warns when even that is below what the limits allow.
fn raise_open_files_limit(config: &ServeConfig) {
    // Pending connections, and as many Hocuspocus sockets not yet
    // authenticated.
    let wanted = config.max_connections as u64 + 2 * config.max_pending_connections + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if config.max_connections > 0 && limit < wanted => warn!(
            limit,
            wanted,
            "the open-files limit is below --max-connections + --max-pending-connections; \
             when it runs out, new connections wait (raise it with `ulimit -n`, or \
             LimitNOFILE= under systemd, or lower --max-connections)"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => warn!(error = %e, "could not read or raise the open-files limit"),
    }
}

/// The token checker from the configuration; warns loudly when there is none.
fn authenticator(config: &ServeConfig) -> anyhow::Result<Option<Authenticator>> {
    let from_file = match &config.auth_secret_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read the auth secret file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        None => None,
    };
    let secret = from_file.or_else(|| config.auth_secret.as_ref().map(|s| s.expose().to_owned()));
    let auth = Authenticator::new(secret.as_deref(), config.auth_public_key.as_deref())?;
    match &auth {
        Some(a) => info!(?a, "document tokens required"),
        None => warn!(
            "AUTH IS OFF: no --auth-secret or --auth-public-key, so anyone who can reach this \
             server can read and write every document. Configure one before exposing it."
        ),
    }
    match config.admin_key() {
        Some(key) => admin_key::check_strength(key)?,
        None => info!("no --admin-key: /auth/token and the admin API are off"),
    }
    Ok(auth)
}

/// Applies the snapshot retention policy to every document, now and then.
async fn prune_snapshots(
    store: Arc<dyn EngineStore>,
    policy: RetentionPolicy,
    every: std::time::Duration,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(docs) = store.list().await else {
            continue;
        };
        let now = clock.now_ms();
        for doc in docs {
            match store.prune_snapshots(&doc, policy, now).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(%doc, pruned = n, "old snapshots pruned"),
                Err(e) => warn!(%doc, error = %e, "pruning snapshots failed"),
            }
        }
    }
}

fn webhook_config(config: &ServeConfig) -> anyhow::Result<Option<WebhookConfig>> {
    let urls: Vec<String> = config
        .webhook_urls
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    for url in &urls {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "webhook URL {url:?} must start with http:// or https://"
        );
    }
    let secret = config
        .webhook_secret
        .as_ref()
        .map(|s| s.expose().to_owned())
        .filter(|s| !s.is_empty())
        .context("--webhook-url needs --webhook-secret, so receivers can check the signature")?;
    Ok(Some(WebhookConfig {
        urls,
        secret,
        debounce: config.webhook_debounce,
        max_wait: config.webhook_max_wait,
    }))
}
