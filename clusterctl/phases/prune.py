"""The prune phase, last: what earlier runs shipped and this one replaced is removed.

A new filebox (170 MB with node) or app version leaves the old one on every host. Once consul and
the services run from the new one, the old filebox containers of this cluster go, and so do
clusterctl's images that this run did not ship and that no container on the host uses (another
cluster's included). Removing a filebox container is safe even while a container still mounts its
volume: the mount stays (it is not removed with -v).
"""

from __future__ import annotations

from clusterctl.commands.base import Cmd
from clusterctl.commands.docker import as_root
from clusterctl.config.models import Host
from clusterctl.facts.parser import HostFacts
from clusterctl.phases.base import Context, cluster_containers
from clusterctl.shipping.store import store_of


def wanted_image_ids(ctx: Context, facts: HostFacts) -> set[str]:
    """This run's images, under the IDs this host's image store gives them."""
    store = store_of(facts)
    images = list(ctx.inputs.images) + list(ctx.inputs.apps.values())
    return {store.image_id(i) for i in images}


def in_use(image_id: str, tags: tuple[str, ...], used: set[str]) -> bool:
    """Whether a container's image (as `docker ps` names it: a tag, a full ID, or the short
    ID of a container created by ID, e.g. someone else's `docker run $(docker images -q ...)`)
    is this image."""
    if used & set(tags) or image_id in used:
        return True
    digest = image_id.removeprefix("sha256:")
    return any(len(u) >= 12 and digest.startswith(u.removeprefix("sha256:")) for u in used if all(c in "0123456789abcdef:sha" for c in u))


class PrunePhase:
    name = "prune"
    title = "Old filebox containers and unused clusterctl images removed"

    def plan(self, ctx: Context, host: Host, facts: HostFacts) -> list[Cmd]:
        current = ctx.inputs.filebox_container
        if not current:
            return []  # nothing shipped by this run: nothing known to be old
        old_boxes = sorted(c.name for c in cluster_containers(ctx, facts, "filebox") if c.name != current)
        # Images that stay: this run's, and any a container (of any cluster) was created from.
        keep = wanted_image_ids(ctx, facts)
        used = {c.image for c in facts.docker.containers if c.name not in old_boxes} | set(facts.docker.foreign_images)
        old = [
            i
            for i in facts.docker.images
            if i.labels.get("clusterctl.role") and i.id not in keep and not in_use(i.id, i.repo_tags, used)
        ]
        # By tag (an image goes with its last tag; by ID, docker refuses one with several tags).
        old_images = sorted({ref for i in old for ref in (i.repo_tags or (i.id,))})
        cmds = []
        if old_boxes:
            cmds.append(Cmd(("docker", "rm", *old_boxes), f"remove the old filebox container(s) {', '.join(old_boxes)}"))
        if old_images:
            cmds.append(Cmd(("docker", "image", "rm", *old_images), f"remove {len(old_images)} image(s) no longer used"))
        return [as_root(c, facts.sudo) for c in cmds]
