"""Who trains and who stands by: a pure function over worker addresses (no Dask).

Every round the loop splits the running workers into *active* agents, which train one shard
each, and *hot standbys*, which only keep the current version loaded so that a promotion
starts warm. :func:`assign_roles` decides it from the previous round's roles and the workers
running now:

- roles are sticky: an active agent that is still running stays active, a standby stays a
  standby, so shards do not reshuffle and standbys stay warm;
- each active agent that is gone is replaced by the longest-waiting standby (a promotion);
- new workers refill the standby pool up to its target, then become active;
- a standby that took over a lost agent's shard mid-round (:func:`after_takeover`) is active
  from then on, in its place;
- active agents always outnumber standbys (the pool is at most ``(live - 1) // 2``), so a
  small fleet keeps learning at full width: a 2-worker cluster has no standby;
- with ``max_active`` (the run spec's ``agents``) at most that many train; the workers left
  over after the standbys hold no role (they serve other work, and the adaptive target may
  retire them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cluster_app.errors import RunError

__all__ = ["Roles", "after_takeover", "assign_roles", "standby_pool"]


@dataclass(frozen=True)
class Roles:
    """The fleet's roles for one round.

    Attributes
    ----------
    active : tuple of str
        Workers that train, in shard order.
    standby : tuple of str
        Hot standbys, longest-waiting first.
    lost : tuple of str
        Active agents of the previous round that are not running now.
    promoted : tuple of str
        Standbys made active in their place.
    """

    active: tuple[str, ...] = ()
    standby: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    promoted: tuple[str, ...] = ()


def standby_pool(standby_target: int, live: int) -> int:
    """The standbys ``live`` workers can hold: active agents must outnumber them."""
    return max(0, min(standby_target, (live - 1) // 2))


def assign_roles(
    previous: Roles, running: Iterable[str], standby_target: int, max_active: int | None = None
) -> Roles:
    """The roles for the next round (see the module docstring).

    Parameters
    ----------
    previous : Roles
        The last round's roles (``Roles()`` for a run's first round).
    running : iterable of str
        Addresses of the workers running now, in a stable (sorted) order.
    standby_target : int
        Hot standbys wanted (the run spec's ``standby``).
    max_active : int, optional
        The most agents that train (the run spec's ``agents``).
    """
    live = list(running)
    if not live:
        raise RunError("the cluster has no running workers")
    alive = set(live)
    lost = [w for w in previous.active if w not in alive]
    active = [w for w in previous.active if w in alive]
    standby = [w for w in previous.standby if w in alive]
    promoted = [standby.pop(0) for _ in lost if standby]
    active += promoted
    pool = standby_pool(standby_target, len(live))
    cap = len(live) if max_active is None else max_active
    for w in live:
        if w not in active and w not in standby:
            if active and len(standby) < pool:
                standby.append(w)
            elif len(active) < cap:
                active.append(w)
    if not active:
        active.append(standby.pop(0))
    return Roles(tuple(active), tuple(standby), tuple(lost), tuple(promoted))


def after_takeover(roles: Roles, replaced: dict[str, str]) -> Roles:
    """The roles after standbys took over lost agents' shards mid-round: ``replaced`` maps
    each lost active agent to the standby now running its shard, which takes its place (and
    its shard number) from now on."""
    if not replaced:
        return roles
    used = set(replaced.values())
    return Roles(
        active=tuple(replaced.get(w, w) for w in roles.active),
        standby=tuple(w for w in roles.standby if w not in used),
        lost=roles.lost + tuple(replaced),
        promoted=roles.promoted + tuple(w for w in replaced.values() if w not in roles.promoted),
    )
