//! `weir serve`: opens the node, resumes its applications, serves the HTTP
//! API until SIGINT/SIGTERM, then stops every application with a final commit.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::node::Node;

pub fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let node = Node::open(config.clone())?;
    tracing::info!(data_dir = %config.data_dir.display(), apps = node.applications().len(), "data dir opened");

    let retention = {
        let node = node.clone();
        std::thread::Builder::new().name("weir-retention".into()).spawn(move || retention_loop(&node))?
    };
    let _ = retention;

    let mut bind = config.http;
    if config.api_token.is_none() && !bind.ip().is_loopback() {
        tracing::warn!(
            requested = %bind,
            "no api_token configured: serving on loopback only; set WEIR_API_TOKEN (or api_token) to serve on {}",
            bind.ip()
        );
        bind.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    } else if config.api_token.is_none() {
        tracing::warn!("no api_token configured: anyone on this machine may change applications");
    }
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        node.set_listening(addr);
        // In a cluster: what the catalog holds is applied before this
        // instance says it listens.
        node.join_cluster().map_err(anyhow::Error::msg)?;
        // The first line on stdout: scripts and tests read the bound address here.
        println!("listening http://{addr}");
        if config.brokers.is_empty() {
            tracing::info!(%addr, "weir serving (embedded backend)");
        } else {
            tracing::info!(%addr, brokers = %config.brokers, "weir serving (Kafka backend)");
        }
        let app = crate::api::router(node.clone());
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down: committing and stopping applications");
    node.shutdown();
    Ok(())
}

fn retention_loop(node: &Arc<Node>) {
    loop {
        std::thread::sleep(node.config.retention_check.max(Duration::from_millis(10)));
        match node.backend.enforce_retention(node.config.retention, node.config.retention_bytes) {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "retention dropped old records"),
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
