"""Layer 0: every name posbuild gives a file or folder in a workspace, and the tags it reads.

Each name is spelled here once. The module imports nothing, so a module on the no-op path may use
a name (the lock file's, say) without paying for the module that reads that file.

    <root>/posbuild.toml     CONFIG_NAME: the workspace's configuration (config.py)
    <root>/posbuild.lock     LOCK_NAME: pinned sources and the approved environment (lockfile.py)
    <root>/posbuild-out/     OUT_DIR: the output tree (materialize.py, generations.py)
    <root>/.posbuild/        STATE_DIR: posbuild's own state
        graphs/              GRAPHS: cached action graphs (graphcache.py, query.py)
        tmp/                 TMP: files being fetched or imported before they are renamed
        tree                 TREE: the output tree's clean/dirty marker (uptodate.py)
        lock                 WORKSPACE_LOCK: held by every command that changes the workspace
        store/               STORE: the default store folder ([cache] dir)
        sandbox/             SANDBOX: the sandboxes when /dev/shm is not usable
        failed/              FAILED: what the last failed run of each action left (postmortem.py)
        server.sock          SERVER_SOCKET: where the build server listens (client.py, server.py)
        server.lock          SERVER_LOCK: held by the build server while it runs
        server.log           SERVER_LOG: what the build server says (started, stopped, why)
        server.off           SERVER_OFF: left by a server that could not watch the workspace
        sync-cookie-*        SYNC_COOKIE: files the build server makes to sync its watch
    <store>/db/              STORE_DB: the LMDB environment (store.py)
    <store>/gc.lock          STORE_LOCK: shared by builds, held alone by gc
"""

CONFIG_NAME = "posbuild.toml"
LOCK_NAME = "posbuild.lock"
OUT_DIR = "posbuild-out"
STATE_DIR = ".posbuild"

GRAPHS = "graphs"
TMP = "tmp"
TREE = "tree"
WORKSPACE_LOCK = "lock"
STORE = "store"
SANDBOX = "sandbox"
FAILED = "failed"
SERVER_SOCKET = "server.sock"
SERVER_LOCK = "server.lock"
SERVER_LOG = "server.log"
SERVER_OFF = "server.off"
SYNC_COOKIE = "sync-cookie-"
PY_ENVS = "envs"  # py_env environments: <digest>/, and by-label/<pkg>/<name> links to them

STORE_DB = "db"
STORE_LOCK = "gc.lock"

NO_CACHE_TAG = "no-cache"  # never looked up in nor written to a cache; never verified
NETWORK_TAG = "network"  # keeps the host's network in the namespace sandbox
# `nondeterministic-output:NAME`: output NAME (as in `outs`) may differ between runs: not verified
NONDETERMINISTIC_OUTPUT_TAG = "nondeterministic-output:"
