#!/usr/bin/env bash
# One experiment of a sweep, on whatever machine a scheduler gave it (Slurm, SkyPilot, by hand):
# clone the repository at one revision, run `dvc exp run` with its overrides, and share the result
# through the git remote and the DVC remote, while every stage logs to the shared MLflow server.
#
#   cluster/run_experiment.sh GIT_URL REV NAME [-S key=value ...]
#
#   GIT_URL   the repository to clone (its DVC remote is the default one committed in .dvc/config)
#   REV       the commit (or branch, tag) every experiment of the sweep starts from: pin the commit
#             (`git rev-parse HEAD`) so that all of them share one baseline
#   NAME      the experiment's name (`dvc exp show`, the MLflow run name), unique in the sweep
#   -S ...    dvc exp run's parameter overrides, e.g. -S lr=0.0002 -S label_noise=0.1
#
# Environment:
#   MLFLOW_TRACKING_URI  required: the shared server, http(s)://host:port
#   ANIME_DCGAN_VENV     a Python environment with the project's dependencies, reused as is (e.g. one
#                        `make install` made in a checkout on a shared filesystem); unset: `make install`
#                        in the clone creates one (minutes, on every task)
#   ANIME_DCGAN_WORKDIR  clone there and keep it; unset: a scratch folder under $TMPDIR, removed at exit
#   and the DVC remote's credentials (AWS_*, ...), as for `dvc pull`.
set -euo pipefail

fail() { echo "run_experiment.sh: $*" >&2; exit 1; }
trap 'echo "run_experiment.sh: failed (exit $?) at: $BASH_COMMAND" >&2' ERR

[ $# -ge 3 ] || fail "usage: run_experiment.sh GIT_URL REV NAME [-S key=value ...]"
git_url=$1 rev=$2 name=$3
shift 3
overrides=("$@")
for ((i = 0; i < ${#overrides[@]}; i += 2)); do
    [ "${overrides[i]}" = "-S" ] && [ -n "${overrides[i + 1]:-}" ] ||
        fail "overrides come as '-S key=value' pairs, got: ${overrides[*]}"
done

# a run logged to a local store on a scratch disk would be lost with the machine
case "${MLFLOW_TRACKING_URI:-}" in
    http://* | https://*) ;;
    "") fail "MLFLOW_TRACKING_URI is not set: point it at the shared MLflow server (http://host:port)" ;;
    *) fail "MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI is not a server: use the shared one (http://host:port)" ;;
esac

if [ -n "${ANIME_DCGAN_WORKDIR:-}" ]; then
    clone=$ANIME_DCGAN_WORKDIR
else
    clone=$(mktemp -d "${TMPDIR:-/tmp}/anime-dcgan-$name.XXXXXX")
    trap 'rm -rf "$clone"' EXIT
fi

echo "run_experiment.sh: $name: cloning $git_url at $rev into $clone"
git clone --quiet "$git_url" "$clone"
cd "$clone"
commit=$(git rev-parse --verify --quiet "$rev^{commit}" || git rev-parse --verify --quiet "origin/$rev^{commit}") ||
    fail "$rev is no commit, branch or tag of $git_url"
git checkout --quiet --detach "$commit"
# checked before hours of training, not at the push: the remote refuses a second experiment of that name
if git ls-remote --exit-code origin "refs/exps/${commit:0:2}/${commit:2}/$name" >/dev/null; then
    fail "$git_url already holds experiment $name of $commit: give this one another name"
fi

if [ -n "${ANIME_DCGAN_VENV:-}" ]; then
    [ -x "$ANIME_DCGAN_VENV/bin/dvc" ] || fail "ANIME_DCGAN_VENV=$ANIME_DCGAN_VENV has no bin/dvc"
    venv=$ANIME_DCGAN_VENV
else
    make install
    venv=$clone/.venv
fi
# the stages call `python` and `dvc` from PATH (and import the clone's own src/, see dvc.yaml)
export PATH="$venv/bin:$PATH"

# --pull: first fetch the remote's run cache (the small records of every stage run any task pushed),
# then take a stage whose command, code, data and parameters ran before from it, downloading only
# its outputs, instead of running it again (the data stages, shared by the whole sweep); and pull
# the outputs of stages that dvc.lock already has
dvc exp run --pull -n "$name" "${overrides[@]}"
# the experiment's commit to the git remote, its outputs to the DVC remote, and --run-cache: this
# task's stage runs, for the tasks that come after it
dvc exp push --run-cache origin "$name"
echo "run_experiment.sh: $name: done; fetch it with: dvc exp pull origin $name"
