"""Machine type registration and reads through the real server."""

from __future__ import annotations

import dataclasses

import pytest

import statekeeper as sk


def _type(name: str, **changes: object) -> sk.MachineType:
    base = sk.MachineType(
        name=name,
        version=1,
        states=["a", "b", "z"],
        initial_state="a",
        terminal_states=["z"],
        transitions=[
            sk.Transition("go", ["a"], "b", tasks=[sk.Timer("timeout", "finish", delay_ms=1000)]),
            sk.Transition("finish", ["a", "b"], "z", tasks=[sk.Outbound("notify", "mail", b"hi")]),
        ],
        description="test type",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_register_get_and_identical_reregistration_is_noop(client: sk.SyncClient, uid: str) -> None:
    name = f"mt{uid.replace('-', '')}"
    first = client.register_machine_type(_type(name))
    assert first.created and first.revision > 0
    assert client.register_machine_type(_type(name)).created is False
    got = client.get_machine_type(name)
    assert got == first.machine_type
    assert got.transitions[0].tasks[0] == sk.Timer("timeout", "finish", delay_ms=1000)


def test_different_definition_same_version_is_already_exists(client: sk.SyncClient, uid: str) -> None:
    name = f"mt{uid.replace('-', '')}"
    client.register_machine_type(_type(name))
    with pytest.raises(sk.AlreadyExistsError) as e:
        client.register_machine_type(_type(name, states=["a", "b", "z", "extra"]))
    assert e.value.reason == "MACHINE_TYPE_EXISTS"
    client.register_machine_type(_type(name, version=2, states=["a", "b", "z", "extra"]))
    assert client.get_machine_type(name).version == 2
    assert client.get_machine_type(name, 1).states == ("a", "b", "z")
    names = [(m.name, m.version) for m in client.list_machine_types(all_versions=True) if m.name == name]
    assert names == [(name, 1), (name, 2)]
    assert [(m.name, m.version) for m in client.list_machine_types() if m.name == name] == [(name, 2)]


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"states": []}, "machine_type.states", "FIELD_REQUIRED"),
        ({"states": ["a", "b", "z", "a"]}, "machine_type.states[3]", "DUPLICATE_NAME"),
        ({"initial_state": "q"}, "machine_type.initial_state", "UNKNOWN_STATE"),
        ({"terminal_states": ["q"]}, "machine_type.terminal_states[0]", "UNKNOWN_STATE"),
        (
            {"transitions": [sk.Transition("go", ["q"], "b")]},
            "machine_type.transitions[0].sources[0]",
            "UNKNOWN_STATE",
        ),
        (
            {"transitions": [sk.Transition("go", ["a"], "q")]},
            "machine_type.transitions[0].destination",
            "UNKNOWN_STATE",
        ),
        (
            {"transitions": [sk.Transition("go", [], "b")]},
            "machine_type.transitions[0].sources",
            "FIELD_REQUIRED",
        ),
        (
            {"transitions": [sk.Transition("go", ["a"], "b"), sk.Transition("go", ["b"], "z")]},
            "machine_type.transitions.name[1]",
            "DUPLICATE_NAME",
        ),
        (
            {"transitions": [sk.Transition("back", ["z"], "a")]},
            "machine_type.transitions[0].sources[0]",
            "TERMINAL_SOURCE",
        ),
        (
            {"transitions": [sk.Transition("go", ["a"], "b", tasks=[sk.Timer("t", "nope")])]},
            "machine_type.transitions[0].tasks[0].timer.transition",
            "UNKNOWN_TRANSITION",
        ),
        (
            {"transitions": [sk.Transition("go", ["a"], "b", tasks=[sk.Timer("t", "go", delay_ms=-1)])]},
            "machine_type.transitions[0].tasks[0].timer.delay_ms",
            "FIELD_INVALID",
        ),
        (
            {"transitions": [sk.Transition("go", ["a"], "b", tasks=[sk.Outbound("t", "")])]},
            "machine_type.transitions[0].tasks[0].outbound.destination",
            "FIELD_REQUIRED",
        ),
        ({"version": 0}, "machine_type.version", "FIELD_INVALID"),
        ({"name": "1bad"}, "machine_type.name", "FIELD_INVALID"),
    ],
)
def test_invalid_definitions_name_the_field(
    client: sk.SyncClient, uid: str, changes: dict[str, object], field: str, reason: str
) -> None:
    name = changes.pop("name", f"mt{uid.replace('-', '')}")
    with pytest.raises(sk.InvalidArgumentError) as e:
        client.register_machine_type(_type(str(name), **changes))
    assert (e.value.reason, e.value.metadata.get("field")) == (reason, field)
    with pytest.raises((sk.NotFoundError, sk.InvalidArgumentError)):
        client.get_machine_type(str(name))


def test_unknown_type_is_not_found(client: sk.SyncClient) -> None:
    with pytest.raises(sk.NotFoundError) as e:
        client.get_machine_type("never-registered")
    assert e.value.reason == "MACHINE_TYPE_NOT_FOUND"


def test_diagrams(client: sk.SyncClient) -> None:
    mermaid = client.render_diagram("order")
    assert (
        mermaid.startswith("stateDiagram-v2") and "[*] --> new" in mermaid and "new --> paid: pay" in mermaid
    )
    dot = client.render_diagram("order", format="dot")
    assert dot.startswith('digraph "order v1"') and '"new" -> "paid"' in dot and "doublecircle" in dot
