"""SentencePiece and Hugging Face tokenizer files (trained here, tiny), the
chat template with the <video> placeholder, and the dataset word tokenizer."""

import io
import json
import pickle

import numpy as np
import pytest

from data_pipelines import input_pipeline
from data_pipelines import tokenizer as tokenizer_lib

TEXTS = ["what is the man holding", "a red umbrella", "which way does the car turn",
         "the car turns left", "how many birds are there", "three birds"] * 20
QWEN_TEMPLATE = "<|im_start|>user\n<video>\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    import sentencepiece as spm  # noqa: PLC0415
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=model,
                                   vocab_size=40, model_type="bpe", minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / "tok.model"
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    import tokenizers  # noqa: PLC0415
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    folder = tmp_path_factory.mktemp("hf")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<|im_end|>"}, "pad_token": None}))
    return str(folder)


def _check_protocol(tok, base_vocab):
    assert isinstance(tok, tokenizer_lib.Tokenizer)
    ids = {tok.pad_id, tok.bos_id, tok.eos_id, tok.video_id}
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len({tok.pad_id, tok.eos_id, tok.video_id}) == 3
    assert tok.video_id >= base_vocab  # added after the model's own vocabulary
    text = "which way does the car turn"
    ids = tok.encode(text)
    assert tok.video_id not in ids and tok.decode(ids).strip() == text
    prompt = tok.encode(tokenizer_lib.format_prompt(text))
    assert prompt.count(tok.video_id) == 1
    assert tok.decode(ids + [tok.eos_id] + ids).strip() == text  # stops at eos
    assert tok.decode([tok.bos_id] + ids + [tok.pad_id]).strip() == text
    clone = pickle.loads(pickle.dumps(tok))  # what a Grain worker receives
    assert clone.encode(text) == ids and clone.vocab_size == tok.vocab_size


def test_sentencepiece_file(sentencepiece_model):
    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_file=sentencepiece_model).get_piece_size()
    tok = tokenizer_lib.SentencePieceTokenizer(sentencepiece_model)
    _check_protocol(tok, base)
    assert tok.vocab_size == base + 2  # <video> and <pad> were missing
    assert tok.decode([tok.video_id]) == "<video>"


def test_huggingface_file_with_its_config(hf_folder):
    import tokenizers

    base = tokenizers.Tokenizer.from_file(f"{hf_folder}/tokenizer.json").get_vocab_size()
    tok = tokenizer_lib.HuggingFaceTokenizer(hf_folder)
    _check_protocol(tok, base)
    hf = tokenizers.Tokenizer.from_file(f"{hf_folder}/tokenizer.json")
    assert tok.eos_id == hf.token_to_id("<|im_end|>")  # from tokenizer_config.json
    assert tok.bos_id == tok.eos_id  # no bos token: reuse eos, as Qwen does
    prompt = tok.encode(tokenizer_lib.format_prompt("how many birds", template=QWEN_TEMPLATE))
    assert prompt.count(tok.video_id) == 1
    assert prompt[0] == hf.token_to_id("<|im_start|>")  # chat markers stay single tokens


def test_missing_tokenizer_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        tokenizer_lib.SentencePieceTokenizer(str(tmp_path / "nope.model"))
    with pytest.raises(FileNotFoundError, match="nope"):
        tokenizer_lib.HuggingFaceTokenizer(str(tmp_path / "nope" / "tokenizer.json"))


def test_chat_template_multi_turn_and_custom():
    assert tokenizer_lib.format_prompt("what color was the flash") == (
        "<video> question : what color was the flash answer :")
    two = tokenizer_lib.format_prompt("and then", history=[("what moved", "a car")])
    assert two == "<video> question : what moved answer : a car question : and then answer :"
    qwen = tokenizer_lib.format_prompt("q2", history=[("q1", "a1")], template=QWEN_TEMPLATE)
    assert qwen.count("<video>") == 1 and qwen.count("<|im_start|>user") == 2
    assert qwen.index("q1") < qwen.index("a1") < qwen.index("q2")
    with pytest.raises(ValueError, match="<video> once"):
        tokenizer_lib.format_prompt("q", template="question : {question}")
    with pytest.raises(ValueError, match="must not contain"):
        tokenizer_lib.format_prompt("look at <video>")


def test_features_with_a_real_tokenizer_and_template(sentencepiece_model):
    tok = tokenizer_lib.SentencePieceTokenizer(sentencepiece_model)
    feats = input_pipeline.VideoQAFeatures(tok, 128, 8, template=QWEN_TEMPLATE.replace(
        "<|im_start|>", "").replace("<|im_end|>", ""))
    example = dict(frames=np.zeros((2, 4, 4, 3), np.uint8), frame_mask=np.ones(2, bool),
                   question="how many birds are there", answer="three birds", family=0, index=0,
                   history=(("what is the man holding", "a red umbrella"),))
    f = feats.map(example)
    p, n = int(f["prompt_len"]), int(f["answer_len"])
    assert (f["tokens"][:p] == tok.video_id).sum() == 1
    assert tok.decode(f["tokens"][p:p + n]) == "three birds"
    assert "a red umbrella" in tok.decode(f["tokens"][:p])
    assert f["loss_mask"].sum() == n + 1 and f["input_error"] == 0


def test_dataset_word_tokenizer_is_deterministic():
    a = tokenizer_lib.word_tokenizer_for(["B. the car", "A"])
    b = tokenizer_lib.word_tokenizer_for(["A", "B. the car"])
    assert a.vocab == b.vocab and a.vocab[:5] == tokenizer_lib.SPECIAL_TOKENS
    ids = a.encode(tokenizer_lib.format_prompt("the car\nA. x"))
    assert ids.count(a.video_id) == 1 and a.decode(a.encode("b . the car")) == "b . the car"


def test_config_selects_the_tokenizer_file(sentencepiece_model):
    from configs import short_video
    from frejax import config_lib
    from data_pipelines import datasets as data_lib

    config = short_video.get_config("smoke")
    config.data.update(tokenizer="sentencepiece", tokenizer_path=sentencepiece_model)
    config_lib.validate(config)
    tok = data_lib.make_tokenizer(config)
    assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer)
    assert tok.vocab_size == tokenizer_lib.SentencePieceTokenizer(sentencepiece_model).vocab_size
