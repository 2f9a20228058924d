"""API keys scoped to collections (`rag serve --api-keys-file`): two keys, two collections, one real Chroma store.

Each key reads only its collection; what it cannot read answers 404 on every endpoint, as if it did not exist; a
read-only key gets 403 on upload and delete; no key or a wrong one 401. The keys file is read again when it
changes, and a broken version keeps the last good keys. Most cases run on the ASGI app with the scripted backend
(our logic is the subject); one test runs the real server process with SmolLM2 and the official client, asserting
on structure only.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rag.app.access import AccessPolicy, Grant, hash_key
from rag.app.root import Components
from rag.errors import ConfigError
from rag.server.app import ServeOptions, create_app
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import scripted_llm
from tests.test_serve import start_server

HR_KEY = "hr-key-7b1f0c2e9d"
FINANCE_KEY = "finance-key-41aa93"  # the file holds only its SHA-256
ADMIN_KEY = "single-admin-key-55"
HR, FINANCE = "hr-docs", "finance"
HTTP = httpx.Client(timeout=120)
DOCUMENTS = {
    HR: {
        "leave.md": "# Leave\n\nStaff get 30 days of paid leave per year. Parental leave lasts 16 weeks.\n",
        "onboarding.md": "# Onboarding\n\nNew staff meet their mentor on the first Monday.\n",
    },
    FINANCE: {
        "budget.md": "# Budget\n\nThe travel budget is 48,000 euros per year. Invoices are paid within 21 days.\n",
    },
}


def keys_toml(*, finance_collections: str = '["finance"]', hr_write: str = "true") -> str:
    return (
        f'[keys.hr-team]\nkey = "{HR_KEY}"\ncollections = ["{HR}"]\nwrite = {hr_write}\n\n'
        f'[keys.finance-team]\nkey_sha256 = "{hash_key(FINANCE_KEY)}"\ncollections = {finance_collections}\n'
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def data_dir(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keys")
    for collection, files in DOCUMENTS.items():
        folder = root / collection
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8")
        components = Components(Settings(data_dir=root / "data", embedding_model=BUNDLED_EMBEDDER))
        components.share_embedder(embedder)
        report = components.ingest_pipeline(collection).run([folder])
        assert report.files_added == len(files) and not report.files_failed
    return root / "data"


def make_app(data_dir: Path, embedder: Any, keys_file: Path, *, api_key: str | None = None) -> Any:
    settings = Settings(
        data_dir=data_dir,
        embedding_model=BUNDLED_EMBEDDER,
        api_keys_file=keys_file,
        api_key=SecretStr(api_key) if api_key else None,
    )
    components = Components(settings, llm=scripted_llm())
    components.share_embedder(embedder)
    return create_app(components, ServeOptions.from_components(components, warm_up=False))


@pytest.fixture(scope="module")
def http(data_dir: Path, embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    keys = tmp_path_factory.mktemp("keys-file") / "keys.toml"
    keys.write_text(keys_toml(), encoding="utf-8")
    with TestClient(make_app(data_dir, embedder, keys)) as client:
        yield client


def documents_of(http: TestClient, key: str) -> dict[str, dict[str, Any]]:
    response = http.get("/v1/documents", headers=bearer(key))
    assert response.status_code == 200, response.text
    return {item["file_name"]: item for item in response.json()["data"]}


def assert_not_found(response: Any, *hidden: str) -> None:
    """A 404 that does not say the hidden collection exists."""
    assert response.status_code == 404, response.text
    assert response.json()["error"]["type"] == "not_found_error"
    assert all(name not in response.json()["error"]["message"].replace(f"'rag-{name}'", "") for name in hidden)


# -- the policy ----------------------------------------------------------------------------------------------
def test_grants_read_and_write_only_their_collections(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml() + '\n[keys.auditor]\nkey = "audit-key-1"\ncollections = ["*"]\n', encoding="utf-8")
    policy = AccessPolicy(keys_file=keys)
    hr, finance, auditor = (policy.grant_for(key) for key in (HR_KEY, FINANCE_KEY, "audit-key-1"))
    assert hr == Grant("hr-team", frozenset({HR}), write=True)
    assert finance == Grant("finance-team", frozenset({FINANCE}), write=False)
    assert hr.can_read(HR) and hr.can_write(HR) and not hr.can_read(FINANCE) and not hr.can_write(FINANCE)
    assert finance.can_read(FINANCE) and not finance.can_write(FINANCE)
    assert auditor is not None and auditor.can_read("anything-made-later") and not auditor.can_write(HR)
    assert hr.readable([FINANCE, HR, "docs"]) == [HR]
    for wrong in (None, "", "hr-key", HR_KEY + "x", hash_key(FINANCE_KEY), " "):
        assert policy.grant_for(wrong) is None
    assert policy.requires_key and policy.holders() == ["hr-team", "finance-team", "auditor"]


def test_the_single_key_keeps_everything_beside_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(), encoding="utf-8")
    both = AccessPolicy(api_key=ADMIN_KEY, keys_file=keys)
    admin = both.grant_for(ADMIN_KEY)
    assert admin is not None and admin.can_write(FINANCE) and admin.can_write("any-other")
    assert both.grant_for(HR_KEY) == Grant("hr-team", frozenset({HR}), write=True)
    assert AccessPolicy(api_key=ADMIN_KEY).grant_for(HR_KEY) is None
    nobody = AccessPolicy()  # no key at all: loopback only, everyone reads and writes everything
    assert not nobody.requires_key and (grant := nobody.grant_for(None)) is not None and grant.can_write(HR)
    keys.write_text(f'[keys.copy]\nkey = "{ADMIN_KEY}"\ncollections = ["{HR}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[keys.copy\] key: the same key as the single API key"):
        AccessPolicy(api_key=ADMIN_KEY, keys_file=keys)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[keys.a]\nkey = "k-1"\ncollections = ["x1"]\nread_only = true\n', r"\[keys.a\] read_only: unknown field"),
        ('[keys.a]\ncollections = ["x1"]\n', r"\[keys.a\] key/key_sha256: give exactly one of key"),
        ('[keys.a]\nkey = "k-1"\nkey_sha256 = "' + "a" * 64 + '"\ncollections = ["x1"]\n',
         r"\[keys.a\] key/key_sha256: give exactly one"),
        ('[keys.a]\nkey = ""\ncollections = ["x1"]\n', r"\[keys.a\] key: the key is empty"),
        ('[keys.a]\nkey = "  "\ncollections = ["x1"]\n', r"\[keys.a\] key: the key is empty"),
        ('[keys.a]\nkey_sha256 = "abc123"\ncollections = ["x1"]\n', r"\[keys.a\] key_sha256: not a SHA-256 digest"),
        ('[keys.a]\nkey_sha256 = "' + "g" * 64 + '"\ncollections = ["x1"]\n', r"\[keys.a\] key_sha256: not a SHA-256"),
        ('[keys.a]\nkey = "k-1"\ncollections = ["x1"]\n[keys.b]\nkey = "k-1"\ncollections = ["x2"]\n',
         r"\[keys.b\] key: the same key as \[keys.a\]"),
        ('[keys.a]\nkey = "k-1"\ncollections = ["x1"]\n[keys.b]\nkey_sha256 = "' + hash_key("k-1") + '"\n'
         'collections = ["x2"]\n', r"\[keys.b\] key_sha256: the same key as \[keys.a\]"),
        ('[keys.a]\nkey = "k-1"\n', r"\[keys.a\] collections: missing"),
        ('[keys.a]\nkey = "k-1"\ncollections = []\n', r"\[keys.a\] collections: "),
        ('[keys.a]\nkey = "k-1"\ncollections = ["a b"]\n', r"\[keys.a\] collections: 'a b' is not a collection"),
        ('[keys.a]\nkey = "k-1"\ncollections = ["x1"]\nwrite = "yes"\n', r"\[keys.a\] write: "),
        ('[key.a]\nkey = "k-1"\n', r"top level key: unknown field"),
        ("", r"holds no keys"),
        ('[keys.a]\nkey = "k-1\n', r"is not valid TOML"),
    ],
)  # fmt: skip
def test_a_bad_keys_file_is_named_with_its_table_and_field(tmp_path: Path, text: str, expected: str) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as raised:
        AccessPolicy(keys_file=keys)
    assert str(keys) in str(raised.value)
    assert "k-1" not in str(raised.value).replace("[keys.", "")  # the key itself is never quoted


# -- every endpoint, two keys, two collections ----------------------------------------------------------------
def test_models_list_only_the_keys_collections(http: TestClient) -> None:
    def ids(key: str) -> list[str]:
        response = http.get("/v1/models", headers=bearer(key))
        assert response.status_code == 200, response.text
        return [model["id"] for model in response.json()["data"]]

    bare = ids(HR_KEY)[-1]
    assert ids(HR_KEY) == [f"rag-{HR}", bare]  # the bare model reads no documents: every key has it
    assert ids(FINANCE_KEY) == [f"rag-{FINANCE}", bare]
    for headers in ({}, bearer("wrong-key"), bearer(hash_key(FINANCE_KEY)), {"Authorization": HR_KEY}):
        response = http.get("/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_answers_only_from_the_keys_collections(http: TestClient) -> None:
    question = {"messages": [{"role": "user", "content": "How many days of paid leave do staff get?"}]}
    reply = http.post("/v1/chat/completions", json={"model": f"rag-{HR}", **question}, headers=bearer(HR_KEY))
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert {source["file_name"] for source in message["sources"]} <= set(DOCUMENTS[HR])
    assert "30 days" in message["content"]  # the scripted backend quotes passage [1]
    card = http.get(message["sources"][0]["url"].split("testserver")[-1], headers=bearer(HR_KEY))
    assert card.status_code == 200  # the source card opens with the same key
    assert (
        http.get(message["sources"][0]["url"].split("testserver")[-1], headers=bearer(FINANCE_KEY)).status_code == 404
    )

    for stream in (False, True):
        other = http.post("/v1/chat/completions", json={"model": f"rag-{FINANCE}", "stream": stream, **question},
                          headers=bearer(HR_KEY))  # fmt: skip
        assert_not_found(other, FINANCE)
        assert other.json()["error"]["code"] == "model_not_found" and f"rag-{HR}" in other.json()["error"]["message"]
    unknown = http.post("/v1/chat/completions", json={"model": "rag-nothing", **question}, headers=bearer(HR_KEY))
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].replace("rag-nothing", "") == (
        other.json()["error"]["message"].replace(f"rag-{FINANCE}", "")
    )  # a collection it may not read reads exactly like one that does not exist
    assert http.post("/v1/chat/completions", json={"model": f"rag-{HR}", **question}).status_code == 401
    finance = http.post("/v1/chat/completions", json={"model": f"rag-{FINANCE}", **question},
                        headers=bearer(FINANCE_KEY))  # fmt: skip
    assert finance.status_code == 200
    assert {s["file_name"] for s in finance.json()["choices"][0]["message"]["sources"]} <= set(DOCUMENTS[FINANCE])


def test_chunks_and_embeddings_only_in_the_keys_collections(http: TestClient) -> None:
    body = {"model": f"rag-{FINANCE}", "query": "travel budget", "k": 2}
    found = http.post("/v1/chunks", json=body, headers=bearer(FINANCE_KEY))
    assert found.status_code == 200 and "48,000 euros" in found.json()["data"][0]["text"]
    assert_not_found(http.post("/v1/chunks", json=body, headers=bearer(HR_KEY)), FINANCE)
    assert http.post("/v1/chunks", json=body).status_code == 401
    hr_body = {"model": f"rag-{HR}", "query": "travel budget", "k": 5}
    hr_found = http.post("/v1/chunks", json=hr_body, headers=bearer(HR_KEY)).json()["data"]
    assert hr_found and {chunk["file_name"] for chunk in hr_found} <= set(DOCUMENTS[HR])

    embed = {"model": f"rag-{FINANCE}", "input": ["budget"]}
    assert (
        len(http.post("/v1/embeddings", json=embed, headers=bearer(FINANCE_KEY)).json()["data"][0]["embedding"]) == 384
    )
    assert_not_found(http.post("/v1/embeddings", json=embed, headers=bearer(HR_KEY)), FINANCE)
    assert http.post("/v1/embeddings", json=embed).status_code == 401


def test_documents_are_listed_read_and_deleted_only_within_the_keys_collections(http: TestClient) -> None:
    hr_docs, finance_docs = documents_of(http, HR_KEY), documents_of(http, FINANCE_KEY)
    assert set(hr_docs) == set(DOCUMENTS[HR]) and set(finance_docs) == set(DOCUMENTS[FINANCE])
    budget = finance_docs["budget.md"]["id"]
    assert http.get(f"/v1/documents/{budget}", headers=bearer(FINANCE_KEY)).json()["chunks"]
    for key, model in ((HR_KEY, None), (HR_KEY, f"rag-{HR}"), (HR_KEY, f"rag-{FINANCE}")):
        params = {"model": model} if model else {}
        assert_not_found(http.get(f"/v1/documents/{budget}", params=params, headers=bearer(key)), FINANCE)
        assert_not_found(http.delete(f"/v1/documents/{budget}", params=params, headers=bearer(key)), FINANCE)
    assert_not_found(http.get("/v1/documents", params={"model": f"rag-{FINANCE}"}, headers=bearer(HR_KEY)), FINANCE)
    refused = http.delete(f"/v1/documents/{budget}", headers=bearer(FINANCE_KEY))  # read-only key
    assert refused.status_code == 403, refused.text
    assert (
        refused.json()["error"]["code"] == "permission_denied" and "write = true" in refused.json()["error"]["message"]
    )
    assert "budget.md" in documents_of(http, FINANCE_KEY)  # nothing was deleted
    for call in (http.get, http.delete):
        assert call(f"/v1/documents/{budget}").status_code == 401
    assert http.get("/v1/documents").status_code == 401


def test_uploads_jobs_and_deletes_need_a_key_that_may_write(http: TestClient) -> None:
    upload = [("files", ("holidays.txt", b"The office closes on 24 December.\n", "text/plain"))]
    for key, model, expected in ((HR_KEY, f"rag-{FINANCE}", 404), (FINANCE_KEY, f"rag-{HR}", 404),
                               (FINANCE_KEY, f"rag-{FINANCE}", 403), (FINANCE_KEY, "new", 404),
                               (HR_KEY, "new", 404), ("wrong", f"rag-{HR}", 401)):  # fmt: skip
        response = http.post("/v1/ingest", files=upload, data={"model": model}, headers=bearer(key))
        assert response.status_code == expected, (key, model, response.text)
    assert "holidays.txt" not in documents_of(http, FINANCE_KEY)

    job = http.post("/v1/ingest", files=upload, data={"model": f"rag-{HR}"}, headers=bearer(HR_KEY))
    assert job.status_code == 202, job.text
    for _ in range(600):
        status = http.get(f"/v1/ingest/{job.json()['id']}", headers=bearer(HR_KEY)).json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "done" and status["report"]["files_added"] == 1
    assert_not_found(http.get(f"/v1/ingest/{job.json()['id']}", headers=bearer(FINANCE_KEY)), HR)
    assert http.get(f"/v1/ingest/{job.json()['id']}").status_code == 401
    holidays = documents_of(http, HR_KEY)["holidays.txt"]["id"]
    assert_not_found(http.delete(f"/v1/documents/{holidays}", headers=bearer(FINANCE_KEY)), HR)
    deleted = http.delete(f"/v1/documents/{holidays}", headers=bearer(HR_KEY))
    assert deleted.status_code == 200 and deleted.json()["chunks_removed"] >= 1
    assert "holidays.txt" not in documents_of(http, HR_KEY)


# -- the file changes while the server runs -------------------------------------------------------------------
def test_the_keys_file_is_reloaded_on_change_and_a_broken_one_keeps_the_last_good(
    data_dir: Path, embedder: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(), encoding="utf-8")
    with TestClient(make_app(data_dir, embedder, keys, api_key=ADMIN_KEY)) as http:

        def ids(key: str) -> list[str] | int:
            response = http.get("/v1/models", headers=bearer(key))
            return (
                [m["id"] for m in response.json()["data"]][:-1] if response.status_code == 200 else response.status_code
            )

        assert ids(FINANCE_KEY) == [f"rag-{FINANCE}"] and ids(ADMIN_KEY) == [f"rag-{FINANCE}", f"rag-{HR}"]
        keys.write_text(keys_toml(finance_collections=f'["{FINANCE}", "{HR}"]'), encoding="utf-8")
        assert ids(FINANCE_KEY) == [f"rag-{FINANCE}", f"rag-{HR}"]  # the very next request
        assert "reloaded the API keys file" in caplog.text

        keys.write_text('[keys.hr-team]\nkey = "x"\ncolections = ["hr-docs"]\n', encoding="utf-8")  # a typo
        assert ids(FINANCE_KEY) == [f"rag-{FINANCE}", f"rag-{HR}"]  # the last good keys still work
        assert ids(HR_KEY) == [f"rag-{HR}"] and ids("x") == 401
        errors = [record for record in caplog.records if record.levelno == logging.ERROR]
        assert len(errors) == 1 and str(keys) in errors[0].getMessage()
        assert "[keys.hr-team] colections: unknown field" in errors[0].getMessage()
        assert "keeping the keys read before" in errors[0].getMessage()
        ids(HR_KEY)
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # said once, not per request

        keys.unlink()  # gone: also keeps the last good keys
        assert ids(HR_KEY) == [f"rag-{HR}"]
        last = [record.getMessage() for record in caplog.records if record.name == "rag.access"][-1]
        assert last.startswith(f"cannot read the API keys file {keys}: No such file")
        replacement = tmp_path / "new.toml"  # an editor's save: a new file renamed over the old one
        replacement.write_text(keys_toml().replace("[keys.finance-team]", "[keys.finance-2]"), encoding="utf-8")
        os.replace(replacement, keys)
        assert ids(FINANCE_KEY) == [f"rag-{FINANCE}"] and ids(ADMIN_KEY) == [f"rag-{FINANCE}", f"rag-{HR}"]
        http.post("/v1/chunks", json={"model": f"rag-{FINANCE}", "query": "q"}, headers=bearer(HR_KEY))
        http.get("/v1/documents", headers=bearer(ADMIN_KEY))
    for secret in (HR_KEY, FINANCE_KEY, ADMIN_KEY):
        assert secret not in caplog.text  # never logged, not even the broken file's


# -- the real server ----------------------------------------------------------------------------------------
def test_the_real_server_with_two_scoped_keys(data_dir: Path, tmp_path: Path) -> None:
    from openai import AuthenticationError, NotFoundError, OpenAI, PermissionDeniedError

    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(hr_write="false"), encoding="utf-8")
    process, base = start_server(data_dir, "--api-keys-file", str(keys))
    try:
        hr = OpenAI(base_url=f"{base}/v1", api_key=HR_KEY, max_retries=0)
        finance = OpenAI(base_url=f"{base}/v1", api_key=FINANCE_KEY, max_retries=0)
        assert [model.id for model in hr.models.list()][:-1] == [f"rag-{HR}"]
        assert [model.id for model in finance.models.list()][:-1] == [f"rag-{FINANCE}"]
        question = [{"role": "user", "content": "How long does parental leave last?"}]
        reply = hr.chat.completions.create(model=f"rag-{HR}", messages=question)  # type: ignore[arg-type]
        sources = (reply.choices[0].message.model_extra or {})["sources"]
        assert reply.choices[0].message.content is not None
        assert sources and {source["file_name"] for source in sources} <= set(DOCUMENTS[HR])
        with pytest.raises(NotFoundError):
            hr.chat.completions.create(model=f"rag-{FINANCE}", messages=question)  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
        leave = next(d for d in HTTP.get(f"{base}/v1/documents", headers=bearer(HR_KEY)).json()["data"]
                     if d["file_name"] == "leave.md")  # fmt: skip
        with pytest.raises(PermissionDeniedError):
            hr.delete(f"/documents/{leave['id']}", cast_to=object)
        assert HTTP.delete(f"{base}/v1/documents/{leave['id']}", headers=bearer(FINANCE_KEY)).status_code == 404

        keys.write_text(keys_toml(finance_collections=f'["{FINANCE}", "{HR}"]'), encoding="utf-8")
        assert [model.id for model in finance.models.list()][:-1] == [f"rag-{FINANCE}", f"rag-{HR}"]
        keys.write_text("[keys.broken\n", encoding="utf-8")
        assert [model.id for model in finance.models.list()][:-1] == [f"rag-{FINANCE}", f"rag-{HR}"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    flat = " ".join(output.split())  # the console wraps long lines where it likes
    assert f"rag serve: {base}/v1" in flat and "keys required (hr-team, finance-team)" in flat
    assert "is not valid TOML" in flat and "keeping the keys read before" in flat
    for secret in (HR_KEY, FINANCE_KEY):
        assert secret not in output


def test_a_broken_keys_file_stops_the_server_at_start(data_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.ops]\nkey = "{HR_KEY}"\ncollections = ["*"]\nwrite = "yes"\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", "from rag.cli.main import main; main()", "serve", "--host", "0.0.0.0", "--no-llm",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RAG_API_KEYS_FILE": str(keys)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"the API keys file {keys} is invalid: [keys.ops] write:" in result.stderr
    assert HR_KEY not in result.stderr
