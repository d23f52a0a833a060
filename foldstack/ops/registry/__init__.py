"""The model registry: git-native versions and stages (GTO), the W&B model registry, and the promotion gate.

Git-native registry (the embedded default; works offline)
    A registered version is an annotated GTO tag `<model_name>@vX.Y.Z`; the `production` stage is a GTO
    assignment tag `<model_name>#production#N`. GTO allows one version per commit, so each registration gets
    its own small commit: HEAD's tree (the code that produced the model, including dvc.yaml/dvc.lock) with
    HEAD as parent, made with `git commit-tree` - no branch moves, the working tree is never touched. The tag
    message carries the version's record (bundle digests, metrics, data hash). The bundle's bytes are copied
    into `registry.store_dir/<model_name>/<version>/` (a directory per version, never rewritten), with
    `registry_version` written into its manifest so predictions name the version.
    Stage state is read from the tags in the order of GTO's tag counter (not tag timestamps, which have
    one-second resolution): production is the version assigned last and not unassigned since. Promotion
    assigns the new version and unassigns the others, so `gto show`/`gto which` agree with foldstack.

Bytes that travel (store.py, version_bytes.py and local_store.py)
    Before its tag, a version's store directory is hashed into the DVC project's cache (one `.dir` object, as
    `dvc add` makes) and pushed to the project's default DVC remote; the `.dir` hash goes into the record and
    a pointer file `registry/<model>/<version>.dvc` into the record commit's tree. A push that fails leaves no
    tag. Without a remote the version is registered with its bytes on this machine only (said once).
    Where the store lacks a version (a fresh clone, a serving host), `pull` fetches it from the DVC remote -
    or, with no remote configured, from the W&B model registry when online - into a temporary directory,
    verifies it against the registered manifest and renames it into place; `predict --model`, `serve-model`,
    the gate, promote and rollback pull on demand.

Several processes at once (two `registry push`, a push and a promote)
    Every write holds the registry's lock (`<store>/.lock`, an flock the kernel drops if its holder dies):
    choosing the next version, copying the bytes, making the tag, and the stage tags. The bytes go into a
    temporary directory beside the versions, are verified against the bundle's manifest and renamed into
    place; the version tag comes last and is the commit point. A killed push leaves at most a temporary or
    an untagged directory, never a tag without bytes; `foldstack registry check` finds those (and tags whose
    bytes were removed or modified since) and `--repair` clears them. No write removes anything but what it
    made itself in the same call.

Champion/challenger gate
    The candidate and the current production model are both scored by loading their (verified) bundles and
    predicting the current snapshot's holdout; `registry.gate_metric` decides, `registry.gate_tolerance` is
    the margin a candidate must win by. No production: the candidate passes. A tie or a loss keeps
    production; the candidate stays registered with the reason in `artifacts/registry/decision.{json,md}`.

W&B model registry
    Online, the logged model artifact is linked into `wandb-registry-model/<collection>` with alias
    `candidate` (and `production` when promoted), retried with backoff. Offline (or after the retries fail)
    the link is written to a pending-link ledger under `tracking.dir` and into the run's manifest;
    `foldstack registry sync` uploads the offline run (`wandb sync`) and performs the links later.

Nothing here unpickles anything: bundles are verified against their manifests before any model loads.

Models
    A project registers its ensemble as `registry.model_name` and, with `distill.enabled`, the distilled student
    as `<registry.model_name>-student`: a model of its own (versions, production, store, gate decision in
    `artifacts/registry/student-decision.{json,md}`, W&B collection `<wandb_collection>-student`), registered
    after the ensemble by the same code, with the same gate settings. `--model student` resolves to its
    production version (models.py).

The modules, by concern: git.py (errors, running git), tags.py (GTO tags: versions and stages), local_store.py
(the store directory and its lock), store.py and version_bytes.py (bytes on a DVC remote or W&B),
git_registry.py (`GitModelRegistry`: register, promote, roll back, check), gate.py (the promotion gate),
models.py (the ensemble and its student), wandb_links.py (the W&B registry links) and service.py (the calls
behind the commands). Importing the package imports GTO: callers that must stay light import it inside the
function that needs it.
"""

from foldstack.ops.registry.gate import (LOWER_IS_BETTER, GateDecision, evaluate_gate, gate_decision,
                                         score_bundle_on_holdout, write_decision)
from foldstack.ops.registry.git import PullError, RegistryError, git_toplevel
from foldstack.ops.registry.git_registry import GitModelRegistry
from foldstack.ops.registry.local_store import LOCK_FILE, StoreProblem
from foldstack.ops.registry.models import (ENSEMBLE, NO_STUDENT, STUDENT, bundle_role, model_config,
                                           pipeline_student, registered_name)
from foldstack.ops.registry.service import (promote_version, register_bundle, register_models, resolve_model,
                                            resolve_model_version, rollback_production)
from foldstack.ops.registry.tags import PRODUCTION, RECORD_PREFIX, ModelVersion, StageEvent, normalise_version
from foldstack.ops.registry.version_bytes import registry_target
from foldstack.ops.registry.wandb_links import WandbLinks, sync_pending

__all__ = [
    "ENSEMBLE", "LOCK_FILE", "LOWER_IS_BETTER", "NO_STUDENT", "PRODUCTION", "RECORD_PREFIX", "STUDENT", "GateDecision",
    "GitModelRegistry", "ModelVersion", "PullError", "RegistryError", "StageEvent", "StoreProblem", "WandbLinks",
    "bundle_role", "evaluate_gate", "gate_decision", "git_toplevel", "model_config", "normalise_version",
    "pipeline_student", "promote_version", "register_bundle", "register_models", "registered_name", "registry_target",
    "resolve_model", "resolve_model_version", "rollback_production", "score_bundle_on_holdout", "sync_pending",
    "write_decision",
]
