//! SIGHUP for `thoth-ingest run`: reads the config file and the key again,
//! applies what can change while running, and warns about the tables that
//! only a restart applies.

use std::path::Path;

use thoth_ingest::config::Env;
use thoth_ingest::pipeline::Pipeline;
use tracing::{error, info, warn};

/// The parts of the config file a reload does not apply, as written.
pub fn restart_only_tables(path: &Path) -> Vec<(&'static str, Option<toml::Value>)> {
    let doc: Option<toml::Table> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse().ok());
    let get = |name: &str| -> Option<toml::Value> {
        let doc = doc.as_ref()?;
        match name {
            "api.tenant_id" => doc.get("api")?.get("tenant_id").cloned(),
            "queue.cache" => doc.get("queue")?.get("cache").cloned(),
            other => doc.get(other).cloned(),
        }
    };
    ["state", "api.tenant_id", "queue.cache", "admin"]
        .into_iter()
        .map(|name| (name, get(name)))
        .collect()
}

/// SIGHUP: reads the config file and the key again and applies what can
/// change while running (see `Pipeline::reload`). A config or key that does
/// not load changes nothing.
pub async fn reload(
    path: &Path,
    pipeline: &mut Pipeline,
    restart_only: &[(&'static str, Option<toml::Value>)],
) {
    let env = Env::from_process();
    let loaded = thoth_ingest::parse::check::load_config(path, &env).and_then(|c| {
        let key = c.resolve_api_key(&env)?;
        Ok((c, key))
    });
    let (config, (key, origin)) = match loaded {
        Ok(x) => x,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    let problems = match pipeline.reload(&config, &key).await {
        Ok(problems) => problems,
        Err(e) => {
            error!("reload refused, the running configuration stays: {e:#}");
            return;
        }
    };
    // Applied, perhaps but for a source: the rest of the reload goes on.
    for problem in &problems {
        error!("reload: {problem}; its new settings apply as soon as it has stopped");
    }
    thoth_ingest::stage::provenance::reread_host();
    let now = restart_only_tables(path);
    for ((name, before), (_, after)) in restart_only.iter().zip(&now) {
        if before != after {
            warn!("`{name}` changed: it takes effect at the next restart");
        }
    }
    info!(key_from = %origin, "reloaded {}", path.display());
}
