"""Two more fake OpenAI servers for fallback-chain tests, as the fixtures ``small`` and
``big`` (a test module imports ``small_fake_fixture`` and ``big_fake_fixture``): the
generation service's and the gateway's skip tests give them a small and a large
context window."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.fake_openai import FakeOpenAI


@pytest.fixture(name="small")
async def small_fake_fixture() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture(name="big")
async def big_fake_fixture() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server
