"""What `callisto up` prints once the mesh is healthy: endpoints, the demo key, and copy-paste
examples that were just run for real (the banner says what each returned)."""

from __future__ import annotations

import json
import shlex

import httpx

from callisto.deploy import samples_dir
from callisto.mesh.launcher import DEMO_TENANT, Mesh, python_bin
from callisto.mesh.samples import (
    CONFERENCE_AGENT,
    CONFERENCE_TENANT,
    SALES_AGENT,
    SIMULATION_TENANT,
    WORKFLOW_TENANT,
    sample_workflow_path,
)

DEMO_CONVERSATION = "welcome"
CONFERENCE_QUESTION = "Which sessions talk about cold-chain monitoring, and who speaks?"
SALES_QUESTION = "What is the list price of the Tessa Edge E410 with 64 GB?"
SIMULATION_SCENARIO = "Tessaline Systems sells edge servers to Marrowick Motor Works"


def _demo_conversation(mesh: Mesh) -> str:
    """Creates (once) the demo conversation over HTTP/JSON through the gateway; returns its name."""
    headers = {"authorization": f"Bearer {mesh.demo_key}"}
    base = mesh.gateway.http_url
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        found = http.get(f"/v1/conversations/{DEMO_CONVERSATION}")
        if found.status_code == 404:
            created = http.post(
                "/v1/conversations",
                params={"conversation_id": DEMO_CONVERSATION},
                json={"title": "Welcome to Callisto", "tags": ["demo"]},
            )
            created.raise_for_status()
            http.post(
                f"/v1/conversations/{DEMO_CONVERSATION}/messages",
                json={
                    "role": "ROLE_ASSISTANT",
                    "author": "callisto",
                    "text": "Hello from the mesh.",
                },
            ).raise_for_status()
        else:
            found.raise_for_status()
        listed = http.get("/v1/conversations", params={"page_size": 1})
        listed.raise_for_status()
    return f"conversations/{DEMO_CONVERSATION}"


def print_banner(mesh: Mesh) -> None:
    say = mesh.say
    conversation = _demo_conversation(mesh)
    key = mesh.demo_key
    gateway = mesh.gateway.grpc_target
    http = mesh.gateway.http_url
    grpcurl = shlex.quote(python_bin("grpcurl"))
    auth = shlex.quote(f"authorization: Bearer {key}")
    create_body = shlex.quote(json.dumps({"title": "My first conversation", "tags": ["demo"]}))
    grpc_body = shlex.quote(json.dumps({"conversation": {"title": "From grpcurl"}}))
    message_body = shlex.quote(json.dumps({"role": "ROLE_USER", "author": "me", "text": "Hi!"}))
    say(
        f"""
Callisto mesh is up — checked: created {conversation} over HTTP/JSON through Envoy.

  gateway     {http}  (HTTP/JSON, gRPC + reflection, gRPC-Web){_console_line(mesh)}
  xDS         {mesh.control_plane.address}  (control plane: Envoy's endpoints from the registry)
{_replica_lines(mesh)}{_model_endpoints(mesh)}
  redis       {mesh.redis.url}  (AOF appendfsync {mesh.redis.appendfsync})
  envoy admin {mesh.gateway.admin_url}
  logs        {mesh.logs}
  demo tenant {DEMO_TENANT}
  API key     {key}

Try it (copy and paste):

  # list and describe the services through the gateway (reflection, no key needed)
  {grpcurl} -plaintext {gateway} list
  {grpcurl} -plaintext {gateway} describe callisto.persistence.v1.PersistenceService

  # create a conversation over gRPC, then read it back over HTTP/JSON
  {grpcurl} -plaintext -H {auth} -d {grpc_body} \\
      {gateway} callisto.persistence.v1.PersistenceService/CreateConversation
  curl -s -H {auth} {shlex.quote(f"{http}/v1/conversations?pageSize=5")}

  # HTTP/JSON: create a conversation and post a message
  curl -s -H {auth} -H 'content-type: application/json' -d {create_body} {http}/v1/conversations
  curl -s -H {auth} -H 'content-type: application/json' -d {message_body} \\
      {http}/v1/{conversation}/messages

  # follow the event log live: NDJSON, or server-sent events with Accept: text/event-stream
  curl -sN -H {auth} {http}/v1/{conversation}/events:subscribe
  curl -sN -H {auth} -H 'accept: text/event-stream' {http}/v1/{conversation}/events:subscribe

  # create another key, or revoke one
  {shlex.quote(python_bin("callisto"))} keys create --tenant acme --redis-url {mesh.redis.url}
{_models_examples(mesh) if mesh.config.with_models else ""}
Press Ctrl-C to stop everything.
"""
    )


def _console_line(mesh: Mesh) -> str:
    """Where the web console is (sign in with the demo key), or why it is not served."""
    if mesh.console_url is not None:
        return f"\n  console     {mesh.console_url}  (web console: sign in with the API key below)"
    if mesh.console_problem:
        return f"\n  console     not served: {mesh.console_problem.splitlines()[0]}"
    return ""


def _replica_lines(mesh: Mesh) -> str:
    """One line per service replica (direct gRPC; each registered, so Envoy routes to it)."""
    lines = []
    for replicas in mesh.replicas.values():
        for replica in replicas:
            lines.append(f"  {replica.name:<11} {replica.address}  (gRPC, direct)")
    count = mesh.config.replicas
    each = "one replica" if count == 1 else f"{count} replicas"
    lines.append(f"  ({each} of each service; a part that exits is restarted on its port)")
    return "\n".join(lines)


def _model_endpoints(mesh: Mesh) -> str:
    if mesh.triton is None:
        return ""
    if mesh.milvus is not None:
        milvus = f"{mesh.milvus.uri}  (milvus-lite server, shared by the retrieval replicas)"
    else:
        milvus = f"{mesh.config.home / 'retrieval'}  (Milvus Lite file, embedded in retrieval)"
    return (
        f"\n  triton      {mesh.triton.grpc_url}  (gRPC; HTTP {mesh.triton.http_url})"
        f"\n  milvus      {milvus}"
    )


def _models_examples(mesh: Mesh) -> str:
    gateway = mesh.gateway.grpc_target
    http = mesh.gateway.http_url
    grpcurl = shlex.quote(python_bin("grpcurl"))
    demo = shlex.quote(f"authorization: Bearer {mesh.keys[DEMO_TENANT]}")
    seller = shlex.quote(f"authorization: Bearer {mesh.keys['tessaline-systems']}")
    conference = shlex.quote(f"authorization: Bearer {mesh.keys['conference-demo']}")
    prompt = {
        "messages": [{"role": "ROLE_USER", "content": "Write one sentence about the sea."}],
        "parameters": {"maxTokens": 48, "temperature": 0.7},
    }
    generate = shlex.quote(json.dumps(prompt))
    generate_grpc = shlex.quote(json.dumps({"model": "models/llm", **prompt}))
    question = shlex.quote(
        json.dumps(
            {"query": "What is the list price of the Tessa Edge E410 with 64 GB?", "pageSize": 3}
        )
    )
    entities = shlex.quote(json.dumps({"query": "temperature sensors for vaccines", "pageSize": 3}))
    keys = mesh.config.home / "keys"
    folder = shlex.quote(str(samples_dir() / "tenants" / "corvane-data"))
    return f"""{_chat_examples(mesh)}{_simulation_examples(mesh)}{_workflow_examples(mesh)}
  # stream tokens from the LLM (SmolLM2 on Triton): NDJSON, server-sent events, gRPC
  curl -sN -H {demo} -d {generate} {http}/v1/models/llm:generate
  curl -sN -H {demo} -H 'accept: text/event-stream' -d {generate} {http}/v1/models/llm:generate
  {grpcurl} -plaintext -H {demo} -d {generate_grpc} \\
      {gateway} callisto.generation.v1.GenerationService/Generate

  # cited passages from tenant tessaline-systems's documents (hybrid search), over HTTP and gRPC
  curl -s -H {seller} -d {question} {http}/v1/documents:search
  {grpcurl} -plaintext -H {seller} -d {question} \\
      {gateway} callisto.retrieval.v1.RetrievalService/Search

  # multi-faceted entity search over the conference (tenant conference-demo)
  curl -s -H {conference} -d {entities} {http}/v1/entities:search

  # ingest a folder of your own (PDF, DOCX, CSV, Markdown, HTML, text) with a progress bar
  {shlex.quote(python_bin("callisto"))} ingest {folder} --target {gateway} \\
      --key "$(cat {keys}/demo.key)"

  (sample tenants' keys: {keys}/<tenant>.key)
"""


def _chat_examples(mesh: Mesh) -> str:
    """Ask the sample agents: `callisto chat`, then the same run over curl (SSE) and grpcurl."""
    if mesh.orchestration is None or CONFERENCE_TENANT not in mesh.agents:
        return ""
    gateway = mesh.gateway.grpc_target
    http = mesh.gateway.http_url
    callisto = shlex.quote(python_bin("callisto"))
    grpcurl = shlex.quote(python_bin("grpcurl"))
    key = mesh.keys[CONFERENCE_TENANT]
    auth = shlex.quote(f"authorization: Bearer {key}")
    agent = f"agents/{CONFERENCE_AGENT}"
    home = shlex.quote(str(mesh.config.home))
    run = shlex.quote(json.dumps({"start": {"agents": [agent], "prompt": CONFERENCE_QUESTION}}))
    sales = (
        f"""
  # the sales assistant of each sample company answers from its own documents only
  {callisto} chat --target {gateway} --home {home} --tenant tessaline-systems \\
      --agent {SALES_AGENT} \\
      {shlex.quote(SALES_QUESTION)}
"""
        if "tessaline-systems" in mesh.agents
        else ""
    )
    return f"""
  # ask the conference assistant ({mesh.agents[CONFERENCE_TENANT]}): a cited answer, streamed,
  # with its tool calls as they happen; without a question it is interactive
  {callisto} chat --target {gateway} --api-key {key} --agent {agent} \\
      {shlex.quote(CONFERENCE_QUESTION)}

  # the same run over HTTP (server-sent events) and over gRPC
  curl -sN -H {auth} -H 'accept: text/event-stream' -d {run} {http}/v1/conversations:run
  {grpcurl} -plaintext -H {auth} -d {run} \\
      {gateway} callisto.orchestration.v1.OrchestrationService/RunConversation
{sales}"""


def _simulation_examples(mesh: Mesh) -> str:
    """A simulation between the sample companies (tenant sales-simulation), then finding,
    replaying and exporting it."""
    if mesh.orchestration is None or SIMULATION_TENANT not in mesh.keys:
        return ""
    callisto = shlex.quote(python_bin("callisto"))
    connect = (
        f"--target {mesh.gateway.grpc_target} --home {shlex.quote(str(mesh.config.home))} "
        f"--tenant {SIMULATION_TENANT}"
    )
    pdf = shlex.quote(str(mesh.config.home / "simulation.pdf"))
    return f"""
  # a sales simulation between the sample companies (tenant {SIMULATION_TENANT}, key
  # {mesh.keys[SIMULATION_TENANT]}): suggested agents talk it through, each turn streamed with its
  # sentiment, each agent citing only its own company's documents; --participate to take part
  {callisto} simulate {connect} \\
      {shlex.quote(SIMULATION_SCENARIO)} --agents 3 --max-turns 6

  # find past simulations; replay and export the newest (or name one: conversations/<id>)
  {callisto} conversations list {connect} \\
      --simulations --company 'Tessaline Systems'
  {callisto} conversations replay {connect}
  {callisto} conversations export {connect} \\
      --format pdf -o {pdf}
"""


def _workflow_examples(mesh: Mesh) -> str:
    """The sample workflow (tenant marrowick-motors): run it, answer its approval, download its
    report, and see the receiver's signed deliveries."""
    if mesh.orchestration is None or not mesh.workflow_webhook:
        return ""
    callisto = shlex.quote(python_bin("callisto"))
    connect = (
        f"--target {mesh.gateway.grpc_target} --home {shlex.quote(str(mesh.config.home))} "
        f"--tenant {WORKFLOW_TENANT}"
    )
    plan = shlex.quote(str(sample_workflow_path()))
    log = shlex.quote(str(mesh.receiver_log))
    return f"""
  # a workflow on Marrowick Motor Works' documents (tenant {WORKFLOW_TENANT}): a supplier's offer
  # checked against the procurement policy and the security requirements in parallel, a
  # recommendation that waits for your approval, a PDF report, and a notification through
  # {mesh.workflow_webhook} to the local receiver. It streams each step (lines prefixed by the
  # step), prints the approval's id with the commands that answer it, and waits for the answer
  # (Ctrl-C stops watching, not the run: `workflow watch CONVERSATION` re-attaches)
  {callisto} workflow run {plan} \\
      {connect}

  # from another terminal: the pending approvals, then approve one (or reject, or modify
  # --output TEXT) with the id the run printed; the run goes on at once
  {callisto} approvals list {connect}
  {callisto} approvals approve APPROVAL_ID {connect}

  # the run's PDF report (the finished run prints this command with the artifact's name)
  {callisto} artifacts download ARTIFACT_NAME {connect}

  # what the local receiver got: one JSON line per signed delivery, each verified
  # ("verified": true, "acted": true) and acted on once per idempotency key. The embedded
  # default lets the orchestration process reach it (CALLISTO_OUTBOUND_ALLOWED_NETWORKS=
  # 127.0.0.1/32); webhooks to loopback or private addresses are refused otherwise
  tail -n 5 {log}
"""
