"""Can anyone run this job? The submission's capacity check, without a provider scan.

A submission is refused when no online provider could ever run its tasks
(``market.eligible``: serves the model at or under the price, enough stake and
memory, hardware not flagged). Admitting it needs one such provider, not a
quote over all of them: ``any_eligible`` reads candidates from the offers
index (online, serving the model, at or under the price) a few at a time, and
builds full states only for those, so a network of 10,000 providers costs a
submission what a network of a handful does. Only a refusal reads everyone,
to say why (``jobs.submit``).

The providers found eligible are remembered for ``FRESH_S`` (per coordinator
process, per workload and model), so back-to-back submissions read nothing:
a provider is "online" for a whole heartbeat timeout after its last beat
(seconds), and a second more of that changes no admission that could not
already happen. Only admissions are remembered; a refusal always reads.
"""

from __future__ import annotations

import threading
import weakref

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator.matching import provider_states
from deai.coordinator.service import Coordinator
from deai.core import market
from deai.core.lifecycle import ProviderStatus
from deai.store.models import Offer, Provider

FIRST = 8  # candidates in the first read; each further read is four times larger
FRESH_S = 1.0

_Seen = dict[tuple[str, str], tuple[float, list[market.ProviderState]]]
_seen: weakref.WeakKeyDictionary[Coordinator, _Seen] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def any_eligible(c: Coordinator, s: Session, demand: market.TaskDemand) -> bool:
    """Whether some online provider can run ``demand`` (slots aside: work queues)."""
    key, now = (demand.workload, demand.model), c.now()
    with _lock:
        at, states = _seen.setdefault(c, {}).get(key, (0.0, []))
    fresh = now - min(FRESH_S, c.settings.heartbeat_timeout / 4) < at <= now
    if fresh and any(market.eligible(demand, p, c.settings.min_stake) for p in states):
        return True
    found = [p for p in _candidates(c, s, demand)
             if market.eligible(demand, p, c.settings.min_stake)]
    if found:
        with _lock:
            _seen[c][key] = (now, found)
    return bool(found)


def _candidates(c: Coordinator, s: Session,
                demand: market.TaskDemand) -> list[market.ProviderState]:
    """Online providers that serve the model at or under the price, read until one is
    eligible (those read with it are returned too), or all of them."""
    since = c.now() - c.settings.heartbeat_timeout
    q = (select(Offer.provider_id)
         .join(Provider, Provider.id == Offer.provider_id)
         .where(Offer.workload == demand.workload, Offer.model == demand.model,
                Offer.price <= demand.max_price, Provider.status == ProviderStatus.ACTIVE,
                Provider.last_seen >= since)
         .order_by(Offer.provider_id))
    if demand.only is not None:  # a few named providers (a sealed set, a dataset's list)
        q = q.where(Offer.provider_id.in_(sorted(demand.only)))
    offset, size = 0, FIRST
    while True:
        ids = list(s.scalars(q.offset(offset).limit(size)))
        if not ids:
            return []
        states = provider_states(c, s, ids)
        if any(market.eligible(demand, p, c.settings.min_stake) for p in states):
            return states
        offset, size = offset + size, size * 4
