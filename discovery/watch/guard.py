"""The shrink guard: a service that suddenly loses most of its instances keeps them until Consul
has said so for long enough (ADR 0007). Pure, no IO: the caller passes the clock.

A wiped or restored Consul, an agent restarting with every check critical, or a registrator
that lost its registrations all look like "the instances are gone" for a few seconds; acting on
that turns a Consul hiccup into 503s for every request. A real mass departure is applied all
the same, `hold` seconds late, while HAProxy's own health checks already stop sending traffic
to instances that are really down.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from discovery.model import DesiredState, Service


@dataclass(frozen=True, slots=True)
class Hold:
    """A service whose shrink waits."""

    service: str
    before: int
    after: int
    remaining: float  # seconds

    def __str__(self) -> str:
        return f"{self.service}: {self.before} → {self.after} instances, held {self.remaining:.1f} s more"


@dataclass(frozen=True, slots=True)
class Verdict:
    state: DesiredState  # what to apply now
    held: tuple[Hold, ...] = ()
    recheck_in: float | None = None  # seconds until the first held shrink is due
    confirmed: tuple[str, ...] = ()  # services whose held shrink lasted `hold`: applied now


@dataclass
class ShrinkGuard:
    max_shrink: float = 0.5  # share of a service's instances that may go at once; 1.0 turns it off
    hold: float = 15.0  # seconds a larger shrink must persist before it is applied
    # "At once": a loss is measured from the most instances served in the last `window` seconds.
    # A restarted agent's checks reach the catalog as critical one write at a time, and the
    # watcher applies the first change of a burst at once and batches the rest within --wait-max:
    # a large loss often arrives as two steps. The watcher sets the window from its --wait-max
    # and --wait-min. Scaling down step by step, each step waiting for the last (the e2e
    # scenario), is not held.
    window: float = 2.0
    since: dict[str, float] = field(default_factory=dict)  # service -> when its large shrink was first seen
    seen: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # (when, instances served)
    peak: dict[str, int] = field(default_factory=dict)  # service -> what a held shrink is measured from

    def check(self, served: DesiredState | None, wanted: DesiredState, now: float) -> Verdict:
        """`wanted`, except that a service losing more than `max_shrink` of the most instances it
        served in the last `window` seconds keeps them (and its backend) until the loss has
        lasted `hold` seconds."""
        if served is None or self.max_shrink >= 1.0:
            self.since.clear()
            self.seen.clear()
            self.peak.clear()
            return Verdict(wanted)
        self.seen = {
            s.name: [(t, n) for t, n in self.seen.get(s.name, []) if now - t < self.window] + [(now, len(s.instances))]
            for s in served.services
        }
        services = {s.name: s for s in wanted.services}
        held: list[Hold] = []
        confirmed: list[str] = []
        shrinking: set[str] = set()
        for old in served.services:
            new = services.get(old.name)
            before = max(self.peak.get(old.name, 0), *(n for _, n in self.seen[old.name]))
            after = len(new.instances) if new else 0  # a count: instances replaced one for one are no loss
            if before == 0 or (before - after) / before <= self.max_shrink:
                continue
            first = self.since.get(old.name, now)
            if now - first >= self.hold:
                confirmed.append(old.name)  # Consul has said it long enough: apply
                self.seen[old.name] = [(now, after)]
                continue
            shrinking.add(old.name)
            self.since[old.name], self.peak[old.name] = first, before
            held.append(Hold(old.name, before, after, first + self.hold - now))
            services[old.name] = _keep(old, new)
        self.since = {name: t for name, t in self.since.items() if name in shrinking}
        self.peak = {name: n for name, n in self.peak.items() if name in shrinking}
        if not held:
            return Verdict(wanted, confirmed=tuple(confirmed))
        if sum(s.is_default for s in services.values()) > 1:  # a held default that another replaced
            services = {n: s if s.name not in shrinking else replace(s, is_default=False) for n, s in services.items()}
        return Verdict(DesiredState(tuple(services.values())), tuple(held), min(h.remaining for h in held),
                       tuple(confirmed))


def _keep(old: Service, new: Service | None) -> Service:
    """The served instances plus any new ones; routes as Consul says when it still lists the service."""
    if new is None:
        return replace(old, draining=())
    names = {i.server_name for i in new.instances}
    return replace(new, instances=(*new.instances, *(i for i in old.instances if i.server_name not in names)))
