"""The ``family:`` section of a search config: models derived from the stage-3 winners.

The FBNetV3 paper searches B-E under four FLOPs constraints and derives the rest of the
family by scaling: A is B (the smallest winner) at a lower resolution, F and G are E (the
largest winner) compound-scaled up and trained with stochastic depth 0.2. The section says
that for any winners::

    family:
      enabled: true
      rule: {alpha: 1.1026, beta: 1.1803, gamma: 1.1411}   # depth, width, resolution bases
      members:
        - {name: A, from: smallest, input_size: 224}                     # resolution only
        - {name: F, from: largest, phi: 0.6328, recipe: {drop_path: 0.2}}
        - {name: G, from: largest, phi: 1.4827, recipe: {drop_path: 0.2}}

A member scales the winner ``from`` (smallest / largest by FLOPs) by the compound rule at
``phi`` (depth alpha^phi, width beta^phi, resolution gamma^phi; fbnet_zoo.scaling), or by
explicit ``width`` / ``depth`` / ``resolution`` multipliers; ``input_size`` then fixes the
input size exactly. Its recipe is the winner's with ``recipe`` overrides and the member's
input size as resolution. It is named ``<winner>_<name>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fbnet_zoo.errors import SearchConfigError, check_bool, check_choice, check_keys, check_int, check_number, show_value
from fbnet_zoo.scaling import FBNETV3_COMPOUND, CompoundScaling, scale
from fbnet_zoo.spec import ArchSpec
from fbnet_zoo.training.recipe import Recipe

DEFAULT_RULE = {"alpha": FBNETV3_COMPOUND.alpha, "beta": FBNETV3_COMPOUND.beta, "gamma": FBNETV3_COMPOUND.gamma}
SOURCES = ("smallest", "largest")
MEMBER_KEYS = ("name", "from", "phi", "width", "depth", "resolution", "input_size", "recipe")


def _fail(key: str, value: Any, allowed: str) -> SearchConfigError:
    return SearchConfigError(f"{key}: {show_value(value)} {allowed}")


def _positive(key: str, value: Any) -> float:
    return float(check_number(key, value, 0.0, error=SearchConfigError))


@dataclass(frozen=True)
class FamilyMember:
    name: str
    source: str
    factors: Dict[str, float]            # width, depth, resolution multipliers
    input_size: Optional[int] = None
    recipe: Dict[str, Any] = field(default_factory=dict)
    phi: Optional[float] = None


@dataclass(frozen=True)
class Family:
    rule: CompoundScaling
    members: Tuple[FamilyMember, ...]

    def derive(self, winners: Sequence[Tuple[float, ArchSpec, Recipe, Any]]
               ) -> List[Tuple[ArchSpec, Recipe, str, Any]]:
        """(arch, recipe, origin, tag) of every member, from (flops, arch, recipe, tag) winners;
        the tag is the source winner's (e.g. its constraint label)."""
        if not winners:
            return []
        ordered = sorted(winners, key=lambda w: w[0])
        out = []
        for m in self.members:
            _, arch, recipe, tag = ordered[0] if m.source == "smallest" else ordered[-1]
            derived = scale(arch, name=f"{arch.name}_{m.name}", input_size=m.input_size, **m.factors)
            how = f"phi {m.phi:g}" if m.phi is not None else ", ".join(f"{k} x{v:g}" for k, v in m.factors.items())
            out.append((derived, recipe.replace(**m.recipe, resolution=derived.input_size),
                        f"{m.name}: {m.source} winner {arch.name} scaled ({how}; input {derived.input_size})", tag))
        return out


def parse_family(section: Mapping[str, Any], where: str = "family") -> Optional[Family]:
    """The validated family section; None when it is disabled."""
    check_keys(where, section, ("enabled", "members", "rule"), error=SearchConfigError)
    check_bool(f"{where}.enabled", section.get("enabled", False), error=SearchConfigError)
    rule_raw = section.get("rule") or DEFAULT_RULE
    if not isinstance(rule_raw, Mapping) or sorted(rule_raw) != ["alpha", "beta", "gamma"]:
        raise _fail(f"{where}.rule", rule_raw, "is not a mapping with exactly alpha, beta, gamma")
    rule = CompoundScaling(**{k: _positive(f"{where}.rule.{k}", v) for k, v in rule_raw.items()})
    raw_members = section.get("members") or []
    if not isinstance(raw_members, list):
        raise _fail(f"{where}.members", raw_members, "is not a list of members")
    members, names = [], set()
    for i, m in enumerate(raw_members):
        members.append(_parse_member(m, rule, f"{where}.members[{i}]"))
        if members[-1].name in names:
            raise _fail(f"{where}.members[{i}].name", members[-1].name, "is used by an earlier member")
        names.add(members[-1].name)
    if not section.get("enabled", False):
        return None
    return Family(rule, tuple(members))


def _parse_member(m: Any, rule: CompoundScaling, path: str) -> FamilyMember:
    check_keys(path, m, MEMBER_KEYS, error=SearchConfigError)
    name = m.get("name")
    if not isinstance(name, str) or not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise _fail(f"{path}.name", name, "is not a non-empty name of letters, digits, '_' or '-'")
    source = check_choice(f"{path}.from", m.get("from"), SOURCES, error=SearchConfigError)
    explicit = [k for k in ("width", "depth", "resolution") if k in m]
    phi = None
    if "phi" in m:
        if explicit:
            raise _fail(f"{path}.{explicit[0]}", m[explicit[0]], "cannot be given with phi (phi sets all three)")
        phi = float(check_number(f"{path}.phi", m["phi"], -math.inf, error=SearchConfigError))
        factors = rule.factors(phi)
    else:
        factors = {k: _positive(f"{path}.{k}", m.get(k, 1.0)) for k in ("width", "depth", "resolution")}
    size = m.get("input_size")
    if size is not None:
        check_int(f"{path}.input_size", size, 8, error=SearchConfigError)
    if phi is None and not explicit and size is None:
        raise SearchConfigError(f"{path}: scales nothing; give phi, width/depth/resolution or input_size")
    overrides = m.get("recipe") or {}
    if not isinstance(overrides, Mapping):
        raise _fail(f"{path}.recipe", overrides, "is not a mapping of recipe fields")
    fields = list(Recipe.__dataclass_fields__)
    bad = [k for k in overrides if k not in fields or k == "resolution"]
    if bad:
        raise SearchConfigError(f"{path}.recipe.{bad[0]}: not a recipe field a member may set; allowed: "
                                f"{[f for f in fields if f != 'resolution']} (resolution follows the member)")
    try:
        Recipe().replace(**overrides)
    except (ValueError, TypeError) as e:
        raise SearchConfigError(f"{path}.recipe: {e}") from None
    return FamilyMember(name, source, factors, size, dict(overrides), phi)
