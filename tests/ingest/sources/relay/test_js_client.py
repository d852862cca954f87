"""The official JavaScript client (``@elevenlabs/client`` from npm) in text-only mode, under Node, through the relay."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import orjson
import pytest

from ingest.simulator import Scenario, SimulatorThread
from ingest.sources.relay import RelayConfig
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.relay.helpers import AGENT, KEY, RELAY_TOKEN, RelayThread, logged


JS = Path(__file__).parent / "js"
NODE = shutil.which("node")
TIMEOUT = 60 * TIMEOUT_FACTOR
TEXTS = ["hello from js", "Olá 😀"]

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the JS client test needs Node 20+"
)


@pytest.fixture(scope="module")
def js_client() -> Path:
    """The client installed from package-lock.json (``.ci/run`` does it first; ``npm ci`` here otherwise)."""
    if not (JS / "node_modules" / "@elevenlabs" / "client").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node without npm: install npm to run the JS client test"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=TIMEOUT)
    return JS / "conversation.mjs"


def test_the_js_client_holds_a_text_conversation_through_the_relay(data_dir: Path, js_client: Path) -> None:
    assert NODE is not None
    scenario = Scenario(name="js", first_message="Hi!", user_turns=[], extra_events=False, end="wait")
    with (
        SimulatorThread(api_key=KEY, default=scenario, ping_interval=0.05) as sim,
        RelayThread(
            data_dir,
            RelayConfig(agent_ids=[AGENT], base_url=sim.http_url, api_key=KEY, relay_token=RELAY_TOKEN),
        ) as relay,
    ):
        # A backend hands the browser a signed URL: the relay's, fetched with the relay token.
        request = urllib.request.Request(
            f"{relay.http_url}/v1/convai/conversation/get-signed-url?agent_id={AGENT}",
            headers={"xi-api-key": RELAY_TOKEN},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            signed_url = orjson.loads(answer.read())["signed_url"]
        done = subprocess.run(
            [NODE, "--experimental-websocket", "--no-warnings", str(js_client), signed_url, *TEXTS],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        sim.wait_for(lambda s: bool(s.connections) and s.connections[0].closed, TIMEOUT)
        record = sim.sim.connections[0]
        relay.stop()

    assert result["replies"][-len(TEXTS) :] == [f"You said: {t}" for t in TEXTS]
    assert result["conversationId"] == record.conversation_id
    assert record.user_messages == TEXTS and "source=js_sdk" in record.path
    assert record.init is not None and record.init.get("user_id") == "user-js"
    assert (record.close_code, record.closed_by) == (1000, "client")
    lines = [line for line in logged(data_dir) if line.source == "relay"]
    outgoing = [line for line in lines if line.direction == "out"]
    assert len([line for line in lines if line.direction == "in"]) == record.frames_sent
    assert len(outgoing) == record.frames_received
    assert [orjson.loads(line.frame).get("text") for line in outgoing if line.type == "user_message"] == TEXTS
    assert outgoing[0].type == "conversation_initiation_client_data"
