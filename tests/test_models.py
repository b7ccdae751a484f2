"""The two early-fusion models with tiny encoders: shapes, dtypes, masks, freezing, pretrained loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import META_SIZES, NUM_CLASSES, REPO, VOCAB, make_batch, tiny_config

from emotrain.config import ConfigError, from_dict
from emotrain.data.schema import META_FIELDS, meta_vocab_sizes
from emotrain.errors import UserError
from emotrain.models import EncoderSpec, ModelConfig, build_model
from emotrain.models.inputs import model_inputs

@pytest.fixture(params=["audio_text", "video_text"])
def kind(request) -> str:
    return request.param


def test_tiny_configs_load_and_expose_loader_needs():
    audio = tiny_config("audio_text")
    video = tiny_config("video_text")
    assert audio.needs_audio and not audio.needs_video
    assert video.needs_video and not video.needs_audio
    assert (video.video_frames(), video.video_image_size()) == (4, 32)
    vocab_lines = (REPO / "configs/tokenizers/tiny-wordpiece/vocab.txt").read_text().splitlines()
    assert audio.text.config["vocab_size"] == len(vocab_lines) == video.text.config["vocab_size"]


@pytest.mark.parametrize("data, message", [
    ({"kind": "audio_text"}, "needs an `audio`"),
    ({"kind": "video_text", "video": {}, "audio": {}}, "no `audio`"),
    ({"kind": "video_text", "video": {}, "hidden": 10, "attention_heads": 8}, "divisible"),
    ({"kind": "video_text", "video": {}, "dropout": 1.0}, "dropout"),
    ({"kind": "video_text", "video": {"freeze_layers": -1}}, "freeze_layers"),
    ({"kind": "video_text", "video": {}, "pixel_std": [0.2, 0.0, 0.2]}, "pixel_std"),
    ({"kind": "video_text", "video": {}, "pixel_mean": [0.5, 0.5]}, "3 values"),
    ({"kind": "mixed"}, "not one of"),
])
def test_model_config_rejects_nonsense(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data)


def test_unknown_encoder_config_key_is_an_error():
    cfg = tiny_config("video_text", ["video.config.hiden_size=8"])
    with pytest.raises(UserError, match="hiden_size"):
        build_model(cfg, NUM_CLASSES, META_SIZES)


def test_freeze_layers_beyond_depth_is_an_error():
    cfg = tiny_config("audio_text", ["text.freeze_layers=3"])
    with pytest.raises(UserError, match="only 2 layers"):
        build_model(cfg, NUM_CLASSES, META_SIZES)


def test_forward_backward_fp32(kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES)
    batch = make_batch(kind, [0, 3])
    logits = model(batch)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    encoder = model.audio_encoder if kind == "audio_text" else model.video_encoder
    for module in (model.text_encoder, encoder, model.head):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), type(module).__name__


def test_model_does_not_read_labels(kind):
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES).eval()
    batch = make_batch(kind, [1, 2])
    expected = model(batch)
    del batch["labels"]
    assert torch.equal(model(batch), expected)


def test_padding_utterances_do_not_change_the_output(kind):
    """Extra padding utterances (U grows, masks say absent) must leave a turn's logits unchanged."""
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES).eval()
    batch = make_batch(kind, [4, 5], utterances=3)
    padded = dict(batch)
    for key in ("utt_row", "utt_roles", "utt_mask", "audio_index", "audio_present"):
        if key in batch:
            value = batch[key]
            fill = -1 if key in ("utt_row", "audio_index") else 0
            extra = torch.full((value.shape[0], 2, *value.shape[2:]), fill, dtype=value.dtype)
            padded[key] = torch.cat([value, extra], dim=1)
    torch.testing.assert_close(model(padded), model(batch), rtol=1e-4, atol=1e-5)


def test_audio_model_scores_a_shared_clip_as_it_scores_copies_of_it():
    """The loader sends a clip used by several utterance slots once; encoding it once must equal encoding each copy."""
    model = build_model(tiny_config("audio_text"), NUM_CLASSES, META_SIZES).eval()
    shared = make_batch("audio_text", [0, 1, 2], utterances=3)
    shared["audio_index"][1, 0] = shared["audio_index"][2, 0] = shared["audio_index"][0, 1]  # one clip, three slots
    present = shared["audio_present"]
    rows = shared["audio_index"][present]
    per_slot = dict(shared, audio=shared["audio"][rows], audio_lengths=shared["audio_lengths"][rows],
                    audio_index=torch.full_like(shared["audio_index"], -1).masked_scatter(present, torch.arange(len(rows))))
    with torch.no_grad():
        torch.testing.assert_close(model(shared), model(per_slot), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(shared), model(make_batch("audio_text", [0, 1, 2], utterances=3)))


def text_rows_as_copies(batch: dict) -> dict:
    """The batch with every text slot on a row of its own: the rows copied out (``ids[row]``), the
    index ``arange``; what BERT would see if each turn's texts were encoded on their own."""
    copies = dict(batch)
    for prefix in ("utt", "ctx"):
        row = batch[f"{prefix}_row"]
        where = row >= 0
        for part in ("ids", "mask"):
            copies[f"{prefix}_token_{part}"] = batch[f"{prefix}_token_{part}"][row[where]]
        copies[f"{prefix}_row"] = torch.full_like(row, -1).masked_scatter(where, torch.arange(int(where.sum())))
    return copies


def test_text_dedup_equals_copies(kind):
    """The loader sends each distinct utterance and context text of a batch once and BERT encodes
    it once: the logits must equal those of the same batch with a copy of the text per slot."""
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES).eval()
    shared = make_batch(kind, [0, 1, 2, 3], utterances=3, same_text=True)  # every turn reads the same rows
    mixed = make_batch(kind, [0, 1, 2, 3], utterances=3)
    mixed["utt_row"][1, 0] = mixed["utt_row"][2, 1] = mixed["utt_row"][0, 2]  # one text, three slots
    mixed["ctx_row"][3] = mixed["ctx_row"][1]
    with torch.no_grad():
        for batch in (shared, mixed):
            copies = text_rows_as_copies(batch)
            for prefix in ("utt", "ctx"):  # some rows are read by several slots
                used = batch[f"{prefix}_row"][batch[f"{prefix}_row"] >= 0]
                assert len(copies[f"{prefix}_token_ids"]) == len(used) > len(used.unique())
            assert torch.allclose(model(batch), model(copies), rtol=0, atol=1e-6)
        # the shared rows matter: pointing a slot at another text changes its turn's logits
        moved = dict(mixed, utt_row=mixed["utt_row"].clone())
        moved["utt_row"][1, 0] = mixed["utt_row"][1, 1]
        assert not torch.allclose(model(moved)[1], model(mixed)[1])


def test_bf16_autocast_forward_backward(kind):
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES)
    batch = make_batch(kind, [2, 6])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
    assert model.head.net[-1].weight.grad is not None and torch.isfinite(model.head.net[-1].weight.grad).all()
    assert any(p.grad is not None for p in model.text_encoder.parameters())


def test_bf16_parameters_forward_backward(kind):
    """DeepSpeed bf16 casts the parameters (not autocast); float inputs may stay fp32."""
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES).to(torch.bfloat16)
    batch = make_batch(kind, [2, 6])
    logits = model(batch)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
    assert model.head.net[-1].weight.grad.dtype == torch.bfloat16
    bf16_inputs = model_inputs(batch, torch.device("cpu"), torch.bfloat16)  # what the engine feeds a bf16 model
    assert torch.isfinite(model(bf16_inputs).float()).all()


def test_gradient_checkpointing_trains(kind):
    media = "audio" if kind == "audio_text" else "video"
    cfg = tiny_config(kind, ["text.gradient_checkpointing=true", f"{media}.gradient_checkpointing=true", "text.freeze_layers=1"])
    model = build_model(cfg, NUM_CLASSES, META_SIZES)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.text_encoder.modules())
    model(make_batch(kind, [0, 1])).sum().backward()
    last = model.text_encoder.model.encoder.layer[-1].output.dense.weight
    assert last.grad is not None and last.grad.abs().sum() > 0


def test_clip_vector_ignores_sample_padding_with_layer_norm_wav2vec2():
    """With a layer-norm feature encoder the attention mask is passed and padding is masked out."""
    from emotrain.models.encoders import Wav2Vec2Pooled

    config = dict(tiny_config("audio_text").audio.config, feat_extract_norm="layer", do_stable_layer_norm=True)
    encoder = Wav2Vec2Pooled(EncoderSpec(config=config)).eval()
    assert encoder.pass_attention_mask
    wave = torch.randn(1, 8000)
    padded = torch.cat([wave, torch.zeros(1, 8000)], dim=1)
    other = torch.randn(1, 16000)  # a longer clip in the same batch keeps the padding
    with torch.no_grad():
        alone = encoder(wave, torch.tensor([8000]))
        together = encoder(torch.cat([padded, other]), torch.tensor([8000, 16000]))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-4, atol=1e-4)


def test_a_scored_clip_does_not_depend_on_its_batch_with_group_norm_wav2vec2():
    """A group-norm feature encoder normalises over padding too: in eval mode each clip is encoded at its own
    length, so its vector is the same alone or beside a longer clip (what predict and the server rely on);
    training keeps the padded batch, where the longer clip does change it."""
    from emotrain.models.encoders import Wav2Vec2Pooled

    encoder = Wav2Vec2Pooled(EncoderSpec(config=tiny_config("audio_text").audio.config))
    assert not encoder.pass_attention_mask
    torch.manual_seed(0)
    wave, other = torch.randn(1, 8000), torch.randn(1, 16000)
    batch = torch.cat([torch.cat([wave, torch.zeros(1, 8000)], dim=1), other, other])
    lengths = torch.tensor([8000, 16000, 16000])
    with torch.no_grad():
        encoder.eval()
        alone, together = encoder(wave, torch.tensor([8000])), encoder(batch, lengths)
        torch.testing.assert_close(together[0], alone[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(together[1:], encoder(other, torch.tensor([16000])).expand(2, -1), rtol=0, atol=1e-6)
        encoder.train()
        padded = encoder(batch, lengths)
    assert (padded[0] - alone[0]).abs().max() > 1e-4


def test_missing_media_gives_finite_logits_and_trains_the_missing_vector(kind):
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES)
    batch = make_batch(kind, [0, 1])
    if kind == "audio_text":
        batch["audio_present"][:] = False
        batch["audio_index"][:] = -1
        batch["audio"], batch["audio_lengths"] = torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
        missing, encoder = model.audio_missing, model.audio_encoder
    else:
        batch["video_present"][:] = False
        batch["video"].zero_()
        missing, encoder = model.video_missing, model.video_encoder
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert missing.grad is not None and missing.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())  # the encoder never ran


@pytest.mark.parametrize("bf16", [False, True])
def test_batch_with_every_clip_missing_scores_in_eval_mode(kind, bf16):
    """Evaluation runs under autocast, where oneDNN's CPU LSTM rejected float32 input (the
    "missing" vector of a batch without any clip stays float32); a demo evaluation died on it."""
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES).eval()
    batch = make_batch(kind, [0, 1, 2])
    batch["audio_present" if kind == "audio_text" else "video_present"][:] = False
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(batch)
    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()


def test_partly_missing_media_uses_encoder_and_missing_vector(kind):
    model = build_model(tiny_config(kind), NUM_CLASSES, META_SIZES)
    batch = make_batch(kind, [0, 1, 2])
    if kind == "audio_text":
        batch["audio_present"][1] = False
        missing, encoder = model.audio_missing, model.audio_encoder
    else:
        batch["video_present"][1] = False
        missing, encoder = model.video_missing, model.video_encoder
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert missing.grad is not None and any(p.grad is not None for p in encoder.parameters())


def test_frozen_parameters_get_no_gradient(kind):
    overrides = ["text.freeze_layers=1"]
    overrides += ["audio.freeze_feature_encoder=true"] if kind == "audio_text" else ["video.freeze=true"]
    model = build_model(tiny_config(kind, overrides), NUM_CLASSES, META_SIZES)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("text_encoder.model.embeddings.") for n in frozen)
    assert any(n.startswith("text_encoder.model.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("text_encoder.model.encoder.layer.1.") for n in frozen)
    if kind == "audio_text":
        assert any(n.startswith("audio_encoder.model.feature_extractor.") for n in frozen)
        assert not any(n.startswith("audio_encoder.model.encoder.layers.") for n in frozen)
    else:
        assert all(not p.requires_grad for p in model.video_encoder.parameters())
    model(make_batch(kind, [3, 4])).sum().backward()
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None, name
    trainable_grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None for g in trainable_grads) > len(trainable_grads) // 2


def test_video_frame_count_mismatch_is_a_clear_error():
    model = build_model(tiny_config("video_text"), NUM_CLASSES, META_SIZES)
    with pytest.raises(UserError, match="expects 4"):
        model(make_batch("video_text", [0, 1], frames=3))


def test_video_encoder_scales_smaller_frames_up_to_its_input_size():
    """The loader sends small clips at their own size: a flat colour must embed the same at any size."""
    encoder = build_model(tiny_config("video_text"), NUM_CLASSES, META_SIZES).video_encoder.eval()
    colour = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 1, 3, 1, 1)
    full = colour.expand(2, 4, 3, 32, 32).contiguous()
    with torch.no_grad():
        reference = encoder(full)
        for height, width in [(16, 16), (8, 24), (48, 40)]:
            torch.testing.assert_close(encoder(colour.expand(2, 4, 3, height, width).contiguous()), reference)


def test_video_encoder_normalises_uint8_frames_with_the_configured_statistics():
    cfg = tiny_config("video_text", ["pixel_mean=[0.5, 0.25, 0.0]", "pixel_std=[0.5, 0.25, 1.0]"])
    encoder = build_model(cfg, NUM_CLASSES, META_SIZES).video_encoder
    frames = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor(cfg.pixel_mean).view(3, 1, 1), torch.tensor(cfg.pixel_std).view(3, 1, 1)
    torch.testing.assert_close(encoder.normalise(frames), (frames.float() / 255 - mean) / std)
    with pytest.raises(ValueError, match="uint8"):
        encoder.normalise(frames.float())


def test_meta_vocab_sizes_from_manifest_vocab():
    vocab = {"age": ["child", "young"], "gender": ["f", "m"], "topic": ["a", "b", "c"]}
    model = build_model(tiny_config("audio_text"), NUM_CLASSES, meta_vocab_sizes(vocab))
    sizes = [table.num_embeddings for table in model.metadata.tables]
    assert sizes == [meta_vocab_sizes(vocab)[c] for c, _ in META_FIELDS]
    assert sizes[0] == 3 and sizes[8] == 4 and sizes[3] == 1


def _save_tiny(kind: str, spec_config: dict, path: Path) -> dict[str, torch.Tensor]:
    from transformers import BertConfig, BertModel, TimesformerConfig, TimesformerModel, Wav2Vec2Config, Wav2Vec2Model

    classes = {"text": (BertConfig, BertModel), "audio": (Wav2Vec2Config, Wav2Vec2Model),
               "video": (TimesformerConfig, TimesformerModel)}
    config_cls, model_cls = classes[kind]
    torch.manual_seed(123)
    extra = {"add_pooling_layer": False} if kind == "text" else {}
    model = model_cls(config_cls(**spec_config), **extra)
    with torch.no_grad():  # values no init code would produce, so a re-init cannot go unnoticed
        for p in model.parameters():
            p.add_(torch.rand_like(p))
    model.save_pretrained(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pretrained_weights_load_unchanged(kind, tmp_path):
    cfg = tiny_config(kind)
    media = "audio" if kind == "audio_text" else "video"
    saved = {}
    for part in ("text", media):
        spec: EncoderSpec = getattr(cfg, part)
        saved[part] = _save_tiny(part, spec.config, tmp_path / part)
        setattr(cfg, part, EncoderSpec(pretrained=str(tmp_path / part), freeze_layers=1))
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES, META_SIZES)
    loaded = {"text": model.text_encoder.model, media: getattr(model, f"{media}_encoder").model}
    for part, state in saved.items():
        now = loaded[part].state_dict()
        assert set(now) == set(state), part
        for name, tensor in state.items():
            assert torch.equal(now[name], tensor), f"{part}: {name} changed"
    # Defaults for pretrained weights: BERT's embeddings frozen, Wav2Vec2's conv encoder frozen.
    assert not model.text_encoder.model.embeddings.word_embeddings.weight.requires_grad
    if kind == "audio_text":
        assert not any(p.requires_grad for p in model.audio_encoder.model.feature_extractor.parameters())
    assert model(make_batch(kind, [0, 1])).shape == (2, NUM_CLASSES)


def test_missing_pretrained_folder_is_a_user_error(tmp_path):
    cfg = tiny_config("audio_text")
    cfg.text = EncoderSpec(pretrained=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot load the bert"):
        build_model(cfg, NUM_CLASSES, META_SIZES)


def test_spec_augment_on_very_short_clips():
    """SpecAugment needs mask_time_length frames: clips shorter than that still train."""
    cfg = tiny_config("audio_text", ["audio.config.apply_spec_augment=true", "audio.config.mask_time_prob=0.5",
                                     "audio.config.mask_time_length=10"])
    model = build_model(cfg, NUM_CLASSES, META_SIZES).train()
    batch = make_batch("audio_text", [0, 1], seconds=0.1)  # at most 5 frames of 20 ms
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()


def test_checkpointed_bert_runs_no_backward_through_frozen_layers_and_keeps_the_gradients():
    from emotrain.models.encoders import BertCLS

    config = tiny_config("video_text").text.config
    plain = BertCLS(EncoderSpec(config=config, freeze_layers=1))
    checkpointed = BertCLS(EncoderSpec(config=config, freeze_layers=1, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    seen = []
    checkpointed.model.encoder.layer[0].register_forward_pre_hook(lambda mod, args, kw: seen.append(
        (args[0] if args else kw["hidden_states"]).requires_grad), with_kwargs=True)
    ids = torch.randint(5, VOCAB, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for model in (plain, checkpointed):
        model.eval()  # no dropout: the two must agree exactly
        model(ids, mask).square().sum().backward()
    assert seen and not any(seen)  # the frozen layer's input needs no gradient: autograd stops above it
    trained = [(n, p) for n, p in checkpointed.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for _, p in trained)
    reference = dict(plain.named_parameters())
    for name, param in trained:
        assert torch.allclose(param.grad, reference[name].grad, atol=1e-6), name
