"""Test tooling shipped with Lantern: the loopback test/simulation LLM server and its prompt reader,
and small synthetic corpora and runs made to order (shared by the test suite and the benches)."""
