"""evolve.agent.client against a scripted OpenAI-compatible server over real HTTP, and a tiny local model."""

import pickle
import random
import socket
import time

import pytest

from evolve.agent.client import MAX_REPLY_BYTES, ChatClient, Completion, LLMError, LocalClient, make_client, pick, price
from tests.openai_server import Reply, ScriptedOpenAI

MESSAGES = [{"role": "system", "content": "You edit training code."},
            {"role": "user", "content": "Propose one change to the learning rate schedule."}]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Loopback stays direct, and nothing is fetched from a model hub."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def server():
    with ScriptedOpenAI() as s:
        yield s


def one_line(e: LLMError) -> str:
    msg = str(e.value if hasattr(e, "value") else e)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    return msg


# -- ChatClient over the wire -----------------------------------------------------------------------


@pytest.mark.warm
def test_a_valid_reply_comes_back_with_its_counts(server):
    server.push(Reply(text="Use a cosine schedule with warm-up.", delay_s=0.1))
    client = ChatClient(server.url, "m-test", temperature=0.3, max_tokens=77, timeout_s=10, retries=0)
    c = client.complete(MESSAGES)
    assert isinstance(c, Completion)
    assert c.text == "Use a cosine schedule with warm-up."
    prompt = "\n".join(m["content"] for m in MESSAGES)
    assert c.prompt_tokens == len(prompt) // 4
    assert c.completion_tokens == len(c.text) // 4
    assert c.model == "m-test"
    assert 0.1 <= c.latency_s < 5
    [request] = server.requests
    body = request["body"]
    assert body["model"] == "m-test"
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 77
    assert body["messages"] == MESSAGES
    assert request["headers"]["content-type"].startswith("application/json")


@pytest.mark.warm
def test_the_key_is_sent_but_never_printed_or_pickled(server, monkeypatch):
    sentinel = "sk-sentinel-6f1d2c9a8b7e"
    monkeypatch.setenv("EVOLVE_TEST_LLM_KEY", sentinel)
    server.push(Reply(text="ok"), Reply(text="again"))
    client = ChatClient(server.url, "m-test", api_key_env="EVOLVE_TEST_LLM_KEY", timeout_s=10, retries=0)
    assert client.complete(MESSAGES).text == "ok"
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {sentinel}"
    assert sentinel not in repr(client)
    blob = pickle.dumps(client)
    assert sentinel.encode() not in blob
    clone = pickle.loads(blob)  # the copy reads the key again from its own environment
    assert clone.complete(MESSAGES).text == "again"
    assert server.requests[1]["headers"]["authorization"] == f"Bearer {sentinel}"


@pytest.mark.warm
def test_without_a_key_no_secret_is_sent(server):
    client = ChatClient(server.url, "m-test", timeout_s=10, retries=0)
    assert client.complete(MESSAGES).text == ""
    assert server.requests[0]["headers"]["authorization"] == "Bearer unused"


@pytest.mark.warm
def test_a_rate_limit_is_retried(server):
    server.push(Reply(status=429, headers={"Retry-After": "0"}), Reply(text="after the wait"))
    client = ChatClient(server.url, "m-test", timeout_s=10, retries=2)
    assert client.complete(MESSAGES).text == "after the wait"
    assert len(server.requests) == 2


@pytest.mark.warm
def test_a_server_error_is_retried(server):
    server.push(Reply(status=500), Reply(text="recovered"))
    client = ChatClient(server.url, "m-test", timeout_s=10, retries=2)
    assert client.complete(MESSAGES).text == "recovered"
    assert len(server.requests) == 2


@pytest.mark.warm
def test_persistent_server_errors_give_up_after_the_retries():
    with ScriptedOpenAI(lambda body: Reply(status=500, text="boom\nwith a second line")) as server:
        client = ChatClient(server.url, "m-test", timeout_s=10, retries=1)
        with pytest.raises(LLMError) as e:
            client.complete(MESSAGES)
        assert "HTTP 500" in one_line(e)
        assert len(server.requests) == 2


@pytest.mark.warm
def test_a_client_error_is_not_retried(server):
    server.push(Reply(status=400, text="bad request"))
    client = ChatClient(server.url, "m-test", timeout_s=10, retries=3)
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert "HTTP 400" in one_line(e)
    assert len(server.requests) == 1


@pytest.mark.warm
def test_a_reply_that_never_comes_times_out_fast(server):
    server.push(Reply(never=True))
    client = ChatClient(server.url, "m-test", timeout_s=0.5, retries=0)
    t0 = time.monotonic()
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert time.monotonic() - t0 < 4
    msg = one_line(e)
    assert "no reply within 0.5 s" in msg


@pytest.mark.warm
def test_a_reply_over_the_size_limit_is_refused(server):
    server.push(Reply(text="x" * 10_000_000))
    client = ChatClient(server.url, "m-test", timeout_s=30, retries=0)
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert f"{MAX_REPLY_BYTES:,}" in one_line(e)


@pytest.mark.warm
def test_a_reply_at_the_size_limit_is_accepted(server):
    server.push(Reply(text="y" * MAX_REPLY_BYTES))
    client = ChatClient(server.url, "m-test", timeout_s=30, retries=0)
    assert len(client.complete(MESSAGES).text) == MAX_REPLY_BYTES


@pytest.mark.warm
@pytest.mark.parametrize("reply", [
    Reply(body=b"not json"),
    Reply(body=b"not json", headers={"Content-Type": "text/plain"}),
    Reply(body=b'{"id": "x", "object": "chat.completion", "model": "m"}'),
    Reply(body=b'{"choices": []}'),
    Reply(body=b'{"choices": {"0": {"message": {"content": "hi"}}}}'),
    Reply(body=b'{"choices": [{"message": "hi"}]}'),
    Reply(body=b'{"choices": [{"message": {"content": 42}}]}'),
    Reply(body=b'[1, 2, 3]'),
    Reply(body=b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "many"}}'),
], ids=["not-json", "not-json-text-plain", "no-choices", "empty-choices", "choices-not-a-list",
        "message-not-an-object", "content-not-text", "a-list", "usage-not-a-number"])
def test_a_malformed_body_is_an_llm_error(server, reply):
    server.push(reply)
    client = ChatClient(server.url, "m-test", timeout_s=10, retries=0)
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert server.url in one_line(e)


@pytest.mark.warm
def test_an_empty_content_is_an_empty_text():
    # a request the script does not answer gets text: an empty text can only come from an empty reply
    with ScriptedOpenAI(lambda body: Reply(text="not scripted")) as server:
        server.push(Reply(text=""), Reply(text="between the empty ones"),
                    Reply(body=b'{"choices": [{"message": {"role": "assistant", "content": null}}]}'))
        client = ChatClient(server.url, "m-test", timeout_s=10, retries=0)
        first, between, second = (client.complete(MESSAGES) for _ in range(3))
        assert (first.text, between.text, second.text) == ("", "between the empty ones", "")
        assert len(server.requests) == 3  # one request each, every one answered by the script
    assert first.prompt_tokens > 0  # the first came with the usage the server counted
    assert second.prompt_tokens == 0 and second.completion_tokens == 0 and second.model == "m-test"


@pytest.mark.warm
def test_one_client_serves_many_threads():
    from concurrent.futures import ThreadPoolExecutor

    def echo(body):
        return Reply(text=body["messages"][-1]["content"].upper(), delay_s=0.05)

    with ScriptedOpenAI(echo) as server:
        client = ChatClient(server.url, "m-test", timeout_s=10, retries=0)
        asks = [f"question {i}" for i in range(12)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            texts = list(pool.map(lambda q: client.complete([{"role": "user", "content": q}]).text, asks))
        assert texts == [q.upper() for q in asks]
        assert len(server.requests) == len(asks)


@pytest.mark.warm
def test_a_closed_port_cannot_connect():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m-test", timeout_s=5, retries=0)
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert "cannot connect" in one_line(e)


@pytest.mark.unit
def test_an_empty_base_url_is_refused():
    with pytest.raises(LLMError):
        ChatClient("", "m-test")


@pytest.mark.warm
def test_the_server_lists_models_and_closes_while_a_reply_is_held():
    import json
    import threading
    import urllib.request

    server = ScriptedOpenAI()
    server.push(Reply(never=True))
    client = ChatClient(server.url, "held", timeout_s=30, retries=0)
    errors = []
    worker = threading.Thread(target=lambda: errors.append(pytest.raises(LLMError, client.complete, MESSAGES)))
    worker.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    with urllib.request.urlopen(server.url + "/models", timeout=5) as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["held"]
    t0 = time.monotonic()
    server.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - t0 < 5
    assert errors  # the held request ended as an LLMError, not a hang


# -- pick, price, make_client --------------------------------------------------------------------


@pytest.mark.unit
def test_pick_draws_by_weight():
    entries = [{"weight": 3.0}, {"weight": 0.0}, {"weight": 1.0}]
    rng = random.Random(7)
    counts = [0, 0, 0]
    for _ in range(4000):
        counts[pick(rng, entries)] += 1
    assert counts[1] == 0
    assert 2.5 < counts[0] / counts[2] < 3.5
    assert [pick(random.Random(1), entries) for _ in range(5)] == [pick(random.Random(1), entries)
                                                                   for _ in range(5)]


@pytest.mark.unit
def test_price_is_per_million_tokens():
    entry = {"price_prompt": 2.0, "price_completion": 8.0}
    c = Completion(text="", prompt_tokens=1_000_000, completion_tokens=500_000, latency_s=0.0, model="m")
    assert price(entry, c) == pytest.approx(6.0)
    assert price(entry, Completion("", 1500, 250, 0.0, "m")) == pytest.approx(0.005)
    assert price({"price_prompt": 0.0, "price_completion": 0.0}, c) == 0.0


@pytest.mark.unit
def test_make_client_picks_the_backend(tmp_path):
    entry = {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "",
             "temperature": 0.2, "max_tokens": 64}
    c = make_client(entry, timeout_s=3.0, retries=1)
    assert isinstance(c, ChatClient) and (c.model, c.timeout_s, c.retries, c.max_tokens) == ("m", 3.0, 1, 64)
    local = make_client({**entry, "backend": "transformers", "model": str(tmp_path)}, 3.0, 1, seed=5)
    assert isinstance(local, LocalClient) and local.seed == 5 and local.max_tokens == 64


# -- LocalClient on a tiny random model ---------------------------------------------------------------

from tests.conftest import N_POSITIONS  # noqa: E402  (the tiny_model fixture's context)


@pytest.mark.unit
def test_a_local_model_answers_chat_messages(tiny_model):
    client = LocalClient(str(tiny_model), temperature=0.7, max_tokens=8)
    c = client.complete(MESSAGES)
    assert isinstance(c, Completion) and isinstance(c.text, str)
    assert c.prompt_tokens > 0
    assert 1 <= c.completion_tokens <= 8
    assert c.model == "tiny-gpt2"
    assert c.latency_s > 0


@pytest.mark.unit
def test_a_local_model_is_reproducible_by_seed(tiny_model):
    a = LocalClient(str(tiny_model), temperature=0.7, max_tokens=8, seed=3)
    b = LocalClient(str(tiny_model), temperature=0.7, max_tokens=8, seed=3)
    first = a.complete(MESSAGES)
    assert b.complete(MESSAGES).text == first.text
    again = pickle.loads(pickle.dumps(a))  # a pickled client forgets its model, not its place in the sequence
    assert again.complete(MESSAGES).text == a.complete(MESSAGES).text


@pytest.mark.unit
def test_a_local_model_greedy_without_temperature(tiny_model):
    a = LocalClient(str(tiny_model), temperature=0.0, max_tokens=5, seed=1)
    b = LocalClient(str(tiny_model), temperature=0.0, max_tokens=5, seed=2)
    assert a.complete(MESSAGES).text == b.complete(MESSAGES).text


@pytest.mark.unit
def test_a_prompt_longer_than_the_context_keeps_its_end(tiny_model):
    client = LocalClient(str(tiny_model), temperature=0.7, max_tokens=8)
    long = [{"role": "user", "content": " ".join(["the loss goes down"] * 200)}]
    c = client.complete(long)
    assert c.prompt_tokens < N_POSITIONS
    assert c.prompt_tokens + c.completion_tokens <= N_POSITIONS
    assert c.completion_tokens >= 1


@pytest.mark.unit
def test_a_local_model_uses_the_chat_template(tiny_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "templated"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    tok.save_pretrained(folder)
    plain = LocalClient(str(tiny_model), temperature=0.7, max_tokens=8, seed=4).complete(MESSAGES)
    templated = LocalClient(str(folder), temperature=0.7, max_tokens=8, seed=4).complete(MESSAGES)
    assert templated.prompt_tokens == plain.prompt_tokens  # the template lays out what the fallback does
    assert templated.text == plain.text


@pytest.mark.unit
@pytest.mark.parametrize("what", ["empty-folder", "tokenizer-only", "missing-folder", "hub-like-name"])
def test_a_folder_without_a_model_is_an_llm_error(tiny_model, tmp_path, monkeypatch, what):
    import shutil

    folder = tmp_path / what
    if what == "hub-like-name":  # a relative name that is no folder is never looked up on a hub
        monkeypatch.chdir(tmp_path)
        folder = "some-org/some-model"
    if what == "empty-folder":
        folder.mkdir()
    elif what == "tokenizer-only":
        shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin",
                                                                          "config.json",
                                                                          "generation_config.json"))
    client = LocalClient(str(folder), max_tokens=4)
    t0 = time.monotonic()
    with pytest.raises(LLMError) as e:
        client.complete(MESSAGES)
    assert str(folder) in one_line(e)
    assert time.monotonic() - t0 < 5


@pytest.mark.warm
def test_a_reply_already_paid_for_is_not_bought_again(server, tmp_path):
    from evolve.agent.writer import Request, write_notebook
    from evolve.agent.replies import ReplyCache

    entry = {"model": "m-test", "temperature": 0.3, "max_tokens": 77, "price_prompt": 1.0, "price_completion": 2.0}
    client = ChatClient(server.url, "m-test", temperature=0.3, max_tokens=77, timeout_s=10, retries=0)

    def ask(pid, messages, text=None, cache_dir=tmp_path):
        if text:
            server.push(Reply(text=text))
        req = Request(proposal_id=pid, purpose="notebook", messages=messages, model=0)
        return write_notebook(req, client, entry, ReplyCache(cache_dir))

    first = ask("00001-aa", MESSAGES, "notes: larger lr helped")
    again = ask("00001-aa", MESSAGES)  # the same proposal asked again, as after a resume (a new process)
    assert first.ok and again.ok and again.text == first.text == "notes: larger lr helped"
    assert len(server.requests) == 1  # the second answer came from the run folder
    assert first.price > 0 and first.calls[0]["cached"] is False
    assert again.price == 0 and again.prompt_tokens == 0 and again.calls[0]["cached"] is True
    # another proposal with the same prompt gets its own sample; another conversation is another request
    assert ask("00002-aa", MESSAGES, "notes: smaller batches").text == "notes: smaller batches"
    other = MESSAGES + [{"role": "user", "content": "and the batch size?"}]
    assert ask("00001-aa", other, "notes: batch 8").text == "notes: batch 8"
    assert len(server.requests) == 3
    for kept in (tmp_path / "replies").glob("*.json"):  # unreadable: asked again, not an error
        kept.write_text("{trunc")
    assert ask("00001-aa", MESSAGES, "notes: again").text == "notes: again"
    assert len(server.requests) == 4
