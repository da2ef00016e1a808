# The agent image: the scheduler and the workers of a fleet on Kubernetes (k8s/, cluster_app.kube).
#
# NOT BUILT OR RUN ON THIS PROJECT'S MACHINES: they have no Docker engine (nor buildah, kaniko or
# a registry). tests/e2e/test_k8s_manifests.py checks only that the files it copies exist and
# that .dockerignore keeps them. Build and push it where an engine runs:
#   docker build -t REGISTRY/cluster-app:0.1.0 .
#   docker build --build-arg JAX_EXTRA=cuda12 -t REGISTRY/cluster-app-gpu:0.1.0 .   # GPU workers
# docs/deploy-kubernetes.md has the whole deployment.
#
# Nothing is downloaded at run time: the code model trains on the Python standard library's own
# sources (kept in python:*-slim, which drops only the stdlib's test packages) and the digits
# ship inside scikit-learn. Only the build fetches packages.
FROM python:3.11-slim

# "" for CPU JAX; "cuda12" (or cuda13) adds NVIDIA's CUDA wheels for jax[<extra>]
ARG JAX_EXTRA=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/cluster-app
COPY pyproject.toml README.md ./
COPY cluster_app ./cluster_app
# then check the scheduler's preloads import, and the dask CLI the specs run is there
RUN pip install ".[s3]" \
 && if [ -n "$JAX_EXTRA" ]; then pip install "jax[$JAX_EXTRA]>=0.10,<0.11"; fi \
 && rm -rf /opt/cluster-app/build \
 && python -c "import cluster_app.observe.preload, cluster_app.scaling.preload, cluster_app.runs.keeper, cluster_app.agent.worker" \
 && dask scheduler --help >/dev/null && dask worker --help >/dev/null

# The paths the shared volumes mount on (cluster_app.kube: STORE_PATH, CACHE_PATH), owned by the
# unprivileged user the pods run as (runAsUser/fsGroup 1000).
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin agent \
 && mkdir -p /var/lib/cluster-app/store /var/lib/cluster-app/jax-cache \
 && chown -R 1000:1000 /var/lib/cluster-app

# JAX's persistent compilation cache (what cluster_app.cluster.worker_env sets for local workers,
# here at the shared volume's path) and the parameter store; the DaskCluster sets the same.
ENV DASK_CLUSTER_APP__CLUSTER__COMPILATION_CACHE=/var/lib/cluster-app/jax-cache \
    JAX_COMPILATION_CACHE_DIR=/var/lib/cluster-app/jax-cache \
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    DASK_CLUSTER_APP__STORE__URL=/var/lib/cluster-app/store

USER 1000
WORKDIR /home/agent
# No ENTRYPOINT: the DaskCluster's `args` are the command (`dask scheduler ...`, `dask worker ...`).
CMD ["dask", "--help"]
