//! `smtp-relay serve`: load the config and run the server on a multi-threaded runtime.

use std::path::Path;

use crate::config::Config;

pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load_or_builtin(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("smtp-relay")
        .build()?;
    let result = runtime.block_on(crate::server::serve_from(
        config,
        config_path.map(Path::to_path_buf),
    ));
    // Tasks stuck in a blocking call (a failed disk) must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result?;
    Ok(())
}
