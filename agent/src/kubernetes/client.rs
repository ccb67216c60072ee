//! The API client: from an explicit kubeconfig (`--kubeconfig`), else as kube-rs infers it (in-cluster
//! ServiceAccount when running in a pod, else `$KUBECONFIG` / `~/.kube/config`).

use std::path::Path;

/// A problem building the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("using kubeconfig {path}: {source}")]
    Config {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding the cluster (in-cluster ServiceAccount, $KUBECONFIG or ~/.kube/config): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the API client: {0}")]
    Build(#[source] kube::Error),
}

/// A client for `kubeconfig`, or the inferred configuration when `None`.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let shown = path.display().to_string();
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| ClientError::Read { path: shown.clone(), source })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Config { path: shown, source })?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    kube::Client::try_from(config).map_err(ClientError::Build)
}
