"""Run directory plumbing: atomic writes, stale-file cleanup, hashes, the manifest's refusal rules, and the
problem-file checks that run before any model is loaded."""

import json

import pandas as pd
import pytest

from selfimprove import artifacts, data


def test_manifest_roundtrip_refuses_another_config_and_overwrites(tmp_path):
    paths = artifacts.RunPaths(tmp_path / "run")
    m = artifacts.Manifest.open(paths, {"a": 1}, "hash1")
    out = artifacts.write_json({"x": 1}, paths.iter_dir(1) / "out.json")
    m.start("1/sample")
    assert json.loads(paths.manifest.read_text())["stages"]["1/sample"]["state"] == "running"
    assert not m.is_done("1/sample", [out])
    m.finish("1/sample", [out], 1.5, paths.root)
    again = artifacts.Manifest.open(paths, {"a": 1}, "hash1")
    assert again.is_done("1/sample", [out])
    out.unlink()
    assert not again.is_done("1/sample", [out])  # outputs gone: the stage is not done
    with pytest.raises(FileExistsError, match="another config"):
        artifacts.Manifest.open(paths, {"a": 2}, "hash2")
    fresh = artifacts.Manifest.open(paths, {"a": 2}, "hash2", overwrite=True)
    assert fresh.data["stages"] == {} and fresh.data["config"] == {"a": 2}
    assert {"torch", "transformers", "trl", "python"} <= set(fresh.data["versions"])


@pytest.mark.parametrize("text, message", [
    ('{"config": {"name": "x", "it', r"manifest.json: not valid JSON \(Unterminated string"),
    ("[1]", r"manifest.json: not a run manifest"),
])
def test_damaged_manifest_is_named_and_kept_unless_overwrite(tmp_path, capsys, text, message):
    from selfimprove import cli

    paths = artifacts.RunPaths(tmp_path / "run")
    artifacts.Manifest.open(paths, {"a": 1}, "hash1")
    out = artifacts.write_json({"x": 1}, paths.iter_dir(1) / "out.json")
    paths.manifest.write_text(text)
    for call in (lambda: artifacts.Manifest.load(paths), lambda: artifacts.Manifest.open(paths, {"a": 1}, "hash1")):
        with pytest.raises(artifacts.ManifestError, match=message + r".*--overwrite"):
            call()
    assert out.exists()  # nothing deleted
    for command in ("report", "figures"):
        assert cli.main([command, str(paths.root)]) == 2
        assert "manifest.json: not" in capsys.readouterr().err
    fresh = artifacts.Manifest.open(paths, {"a": 1}, "hash1", overwrite=True)
    assert fresh.data["stages"] == {} and not paths.iter_dir(1).exists()


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    p = artifacts.write_parquet(df, tmp_path / "x" / "t.parquet")
    assert pd.read_parquet(p).equals(df)
    assert sorted(x.name for x in p.parent.iterdir()) == ["t.parquet"]


def test_clean_stale_removes_leftovers_only(tmp_path):
    keep = tmp_path / "samples_test.parquet"
    keep.write_text("x")
    for name in (".samples_train.parquet.tmp123", "model.tmp", "model.tmp.trainer", ".model.old9"):
        p = tmp_path / name
        p.mkdir() if "model" in name else p.write_text("half")
    removed = artifacts.clean_stale(tmp_path)
    assert len(removed) == 4 and [p.name for p in tmp_path.iterdir()] == ["samples_test.parquet"]


def test_replace_dir_swaps_in_a_finished_directory(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "w").write_text("2")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w").write_text("1")
    artifacts.replace_dir(tmp_path / "new", tmp_path / "model")
    assert (tmp_path / "model" / "w").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_sha256_of_a_directory_sees_content_and_names(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    h1 = artifacts.sha256(tmp_path / "d")
    (tmp_path / "d" / "a").write_text("2")
    assert artifacts.sha256(tmp_path / "d") != h1


@pytest.mark.parametrize("lines,message", [
    (['{"id": "a", "question": "q", "answer": "1"}', "{oops"], r"p.jsonl:2: not valid JSON"),
    (['{"id": "a", "question": "q"}'], r"p.jsonl:1: field 'answer' must be a str"),
    (['{"id": "a", "question": "q", "answer": 1}'], r"field 'answer' must be a str, got 1"),
    (['[1, 2]'], r"p.jsonl:1: expected a JSON object"),
    (['{"id": "a", "question": "q", "answer": "1", "level": "hard"}'], r"field 'level' must be an integer"),
    (['{"id": "a", "question": "q", "answer": "1"}'] * 2, r"p.jsonl:2: duplicate id 'a'"),
    ([""], r"no problems"),
    (['{"id": "a", "question": "q", "answer": "1"}', b'{"id": "b", "question": "caf\xe9", "answer": "1"}'],
     r"p.jsonl:2: not UTF-8 text"),
])
def test_malformed_problem_file_names_file_line_and_field(tmp_path, lines, message):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    with pytest.raises(data.DataError, match=message):
        data.load_jsonl(p)


def test_a_folder_is_not_a_problem_file(tmp_path):
    with pytest.raises(data.DataError, match=rf"{tmp_path}: is a folder, not a JSONL file"):
        data.load_jsonl(tmp_path)


def test_problem_text_may_hold_unicode_line_separators(tmp_path):
    # JSON allows raw U+2028, U+2029 and U+0085 in strings, and json.dumps(ensure_ascii=False) writes them raw
    # (tasks.write_problems); a line ends at '\n' only.
    rows = [{"id": "a", "question": "one\u2028two\x85three\u2029", "answer": "1"},
            {"id": "b", "question": "q", "answer": "2"}]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert data.load_jsonl(p) == rows


def test_training_subset_is_seeded_per_iteration():
    problems = [{"id": f"p{i:03d}"} for i in range(100)]
    a = data.training_subset(problems, 10, seed=0, iteration=1)
    assert a == data.training_subset(problems, 10, seed=0, iteration=1)
    assert a != data.training_subset(problems, 10, seed=0, iteration=2)
    assert data.training_subset(problems, 0, seed=0, iteration=1) == problems


def _word_tokenizer(**special):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "Question", ":", "Answer", "Q", "?"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


def test_render_prompt_without_a_chat_template_uses_the_plain_layout_with_bos():
    base = _word_tokenizer(bos_token="<s>", eos_token="</s>")  # a base checkpoint: no chat template
    assert not base.chat_template
    prompt = data.render_prompt(base, {"question": "Q ?"})
    assert prompt == "<s>Question:\nQ ?\nAnswer:\n"
    assert base(prompt, add_special_tokens=False)["input_ids"][0] == base.bos_token_id  # as the sampler reads it
    assert data.render_prompt(_word_tokenizer(), {"question": "Q ?"}) == "Question:\nQ ?\nAnswer:\n"
    chat = _word_tokenizer(bos_token="<s>")
    chat.chat_template = ("{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
                          "{% if add_generation_prompt %}>{% endif %}")
    assert data.render_prompt(chat, {"question": "Q ?"}) == "[Q ?]>"
