# mmtok: `make demo` runs the main job on the embedded corpus, `make test` runs the test suite.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmtok-installed
DEMO_OUT ?= outputs/demo
DEMO_RUN ?= runs/demo
DEMO_STEPS ?= 300
DEMO_IMAGE_STEPS ?= 60
DEMO_SENTENCES := --text "Grace paints a small boat near the river." \
  --text "The old king reads a letter to his horse." --text "Where did Oscar hide the yellow camera?"

.PHONY: setup test test-fast lint demo demo-images demo-video clean-demo

$(STAMP): setup.cfg pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

## The whole suite, long end-to-end tests included (what CI runs).
test: $(STAMP)
	$(BIN)/python -m flake8 mmtok tests bench scripts
	$(BIN)/python -m pytest -q

## Without the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/python -m flake8 mmtok tests bench scripts

## Build the speech corpus, fine-tune the shipped RVQ codec on it for a few minutes (mel and commitment
## losses: the release holds no discriminator, and a fresh one would first undo more than it adds),
## export it as a Hub folder, then encode/decode held-out utterances and write wavs, spectrograms and
## a metrics table to $(DEMO_OUT). Then speak three new sentences with the shipped aligned TTS models (AR and
## masked diffusion over X-Codec tokens, each with its recorded sampling: their duration predictors set the
## lengths) in a corpus voice (speaker label) and in a prompted voice (3 s of a held-out utterance), the AR one
## once more slower (--pace 1.3), the masked diffusion one once more with the first-hitting sampler, the
## Vec-Tok TTS in the prompted voice and the ResGen TTS over all 8 X-Codec codebooks (16 steps) in the corpus
## voice, to $(DEMO_OUT)/tts, with a table of the time each took; Vec-Tok converts a
## held-out utterance (nyc-m1) into the prompt's voice (gb-f2), to $(DEMO_OUT)/vectok_voice_conversion.
demo: $(STAMP)
	$(BIN)/mmtok data speech --out data/speech --num-utterances 2000
	rm -rf $(DEMO_RUN)
	$(BIN)/mmtok fit -c recipes/codec/rvq_speech.yaml \
	  --model.init_args.init_from checkpoints/rvq-speech-16k \
	  --model.init_args.adversarial_start_step $(DEMO_STEPS) \
	  --trainer.max_steps $(DEMO_STEPS) --trainer.val_check_interval 100 --trainer.limit_val_batches 1 \
	  --trainer.default_root_dir $(DEMO_RUN) --trainer.logger.init_args.save_dir $(DEMO_RUN) \
	  --trainer.logger.init_args.name demo
	$(BIN)/mmtok export $(DEMO_RUN)/checkpoints/last.ckpt $(DEMO_OUT)/model
	$(BIN)/mmtok evaluate $(DEMO_OUT)/model data/speech --split test --max-items 40 --out $(DEMO_OUT)
	$(BIN)/mmtok encode $(DEMO_OUT)/model $(DEMO_OUT)/0_original.wav $(DEMO_OUT)/0_tokens.safetensors
	$(BIN)/mmtok decode $(DEMO_OUT)/model $(DEMO_OUT)/0_tokens.safetensors $(DEMO_OUT)/0_decoded_cli.wav --spectrogram
	for family in ar mdm resgen; do \
	  $(BIN)/mmtok generate checkpoints/tts-$$family-xcodec-aligned $(DEMO_SENTENCES) --speaker us-f3 \
	    --out $(DEMO_OUT)/tts/$${family}_corpus_voice_us-f3 \
	  && $(BIN)/mmtok generate checkpoints/tts-$$family-xcodec-aligned $(DEMO_SENTENCES) \
	    --prompt data/speech/wavs/utt00037.wav --voice gb-f2 --out $(DEMO_OUT)/tts/$${family}_prompted_voice \
	  || exit 1; \
	done
	$(BIN)/mmtok generate checkpoints/tts-ar-xcodec-aligned $(DEMO_SENTENCES) --speaker us-f3 --pace 1.3 \
	  --out $(DEMO_OUT)/tts/ar_corpus_voice_us-f3_pace_1.3
	$(BIN)/mmtok generate checkpoints/tts-mdm-xcodec-aligned $(DEMO_SENTENCES) --speaker us-f3 --sampler fhs \
	  --out $(DEMO_OUT)/tts/mdm_fhs_corpus_voice_us-f3
	$(BIN)/mmtok generate checkpoints/tts-vectok $(DEMO_SENTENCES) --prompt data/speech/wavs/utt00037.wav \
	  --voice gb-f2 --out $(DEMO_OUT)/tts/vectok_prompted_voice
	$(BIN)/python scripts/generation_times.py $(DEMO_OUT)/tts
	$(BIN)/mmtok convert checkpoints/vectok-speech data/speech/wavs/utt00020.wav --prompt data/speech/wavs/utt00037.wav \
	  --out $(DEMO_OUT)/vectok_voice_conversion --overwrite
	$(MAKE) demo-images
	$(MAKE) demo-video
	@echo "demo outputs (wavs, spectrogram pngs, metrics.md, Hub folders, tts/, images/, video/): $(abspath $(DEMO_OUT))"

## Images: build the digits corpus, fine-tune the shipped VQ image tokenizer briefly and measure it; fine-tune the
## shipped class-conditional AR and masked diffusion generators on the shipped tokenizer's tokens and the AR over
## SEED's 16 causal tokens, then write a 10 x 10 class grid from each VQ generator (AR; masked diffusion with its
## MaskGIT default), a 10 x 4 one with the first-hitting sampler (128 calls per batch: the slow one), a 10 x 4 one
## from the SEED AR (its de-tokenizer draws each digit, 25 DPM-Solver steps), a 10 x 4 one from the shipped ResGen
## model over the depth-4 residual tokenizer (16 steps; weak, see README), 10 x 10 ones from the shipped
## Distilled Decoding student of the AR model in one and in two network passes, and the judge's metrics table to
## $(DEMO_OUT)/images. The fine-tunes read the plain digits (the AR release's first stage read deformed copies too).
demo-images: $(STAMP)
	$(BIN)/mmtok data digits --out data/digits --image-size 32
	rm -rf $(DEMO_RUN)/images
	$(BIN)/mmtok fit -c recipes/codec/vq_digits.yaml --model.init_args.init_from checkpoints/vq-digits \
	  --model.init_args.warmup_steps 10 --model.init_args.adversarial_start_step 100000 \
	  --trainer.max_steps $(DEMO_IMAGE_STEPS) --trainer.val_check_interval $(DEMO_IMAGE_STEPS) --trainer.limit_val_batches 1 \
	  --trainer.default_root_dir $(DEMO_RUN)/images/vq --trainer.logger.init_args.save_dir $(DEMO_RUN)/images/vq \
	  --trainer.logger.init_args.name demo_vq
	$(BIN)/mmtok export $(DEMO_RUN)/images/vq/checkpoints/last.ckpt $(DEMO_OUT)/images/vq-model
	$(BIN)/mmtok evaluate $(DEMO_OUT)/images/vq-model data/digits --judge checkpoints/digit-classifier \
	  --out $(DEMO_OUT)/images/tokenizer
	for triple in ar_digits:ar:vq-digits mdm_digits:mdm:vq-digits ar_digits_seed:ar-seed:seed-digits; do \
	  recipe=$${triple%%:*}; rest=$${triple#*:}; family=$${rest%%:*}; tokens=runs/images/tokens-$${rest##*:}; \
	  $(BIN)/mmtok fit -c recipes/images/$$recipe.yaml --model.init_args.init_from checkpoints/digits-$$family \
	    --data.init_args.data data/digits --data.init_args.tokens $$tokens \
	    --model.init_args.lr 0.0002 --model.init_args.warmup_steps 10 \
	    --trainer.max_steps $(DEMO_IMAGE_STEPS) --trainer.val_check_interval $(DEMO_IMAGE_STEPS) \
	    --trainer.limit_val_batches 1 --trainer.default_root_dir $(DEMO_RUN)/images/$$family \
	    --trainer.logger.init_args.save_dir $(DEMO_RUN)/images/$$family --trainer.logger.init_args.name demo_$$family \
	  && $(BIN)/mmtok export $(DEMO_RUN)/images/$$family/checkpoints/last.ckpt $(DEMO_OUT)/images/digits-$$family --half \
	  || exit 1; \
	done
	$(BIN)/mmtok generate $(DEMO_OUT)/images/digits-ar --tokenizer checkpoints/vq-digits --num-samples 10 \
	  --out $(DEMO_OUT)/images/ar
	$(BIN)/mmtok generate $(DEMO_OUT)/images/digits-mdm --tokenizer checkpoints/vq-digits --num-samples 4 \
	  --sampler fhs --out $(DEMO_OUT)/images/mdm_fhs
	$(BIN)/mmtok generate $(DEMO_OUT)/images/digits-mdm --tokenizer checkpoints/vq-digits --num-samples 10 \
	  --sampler maskgit --out $(DEMO_OUT)/images/mdm_maskgit
	$(BIN)/mmtok generate $(DEMO_OUT)/images/digits-ar-seed --tokenizer checkpoints/seed-digits --num-samples 4 \
	  --out $(DEMO_OUT)/images/ar_seed
	$(BIN)/mmtok generate checkpoints/digits-resgen --num-samples 4 --out $(DEMO_OUT)/images/resgen
	for steps in 1 2; do $(BIN)/mmtok generate checkpoints/digits-dd --num-samples 10 --steps $$steps \
	  --out $(DEMO_OUT)/images/dd_$${steps}step || exit 1; done
	$(BIN)/python bench/image_generators.py --model ar=$(DEMO_OUT)/images/digits-ar \
	  --model mdm=$(DEMO_OUT)/images/digits-mdm --judge checkpoints/digit-classifier --data data/digits \
	  --samplers ancestral --steps 32 --samples-per-class 10 --out $(DEMO_OUT)/images/metrics.md
	@echo "image demo (class grids, metrics.md, Hub folders): $(abspath $(DEMO_OUT))/images"

## Video: build the moving-digits corpus, then the shipped text-to-video model (MaskGIT over the shipped
## C-ViViT's tokens) writes four captioned clips of 17 frames, one clip of 33 frames (longer than it was
## trained on: primed segments), a two-caption story and a held-out real clip continued (--prime: its last 5
## frames prime the rest; mp4, gif, png strip each) to $(DEMO_OUT)/video, with the judge's three rates on 40
## held-out captions (metrics.md).
demo-video: $(STAMP)
	$(BIN)/mmtok data moving-digits --out data/moving_digits --num-clips 4000 --frame-size 48 --max-digits 1 \
	  --format npz
	$(BIN)/mmtok generate checkpoints/phenaki-moving-digits --text "the digit 3 moves left and bounces off the wall" \
	  --text "a handwritten seven moving up then bouncing back" \
	  --text "the digit 0 moves down-right and bounces off the wall" --text "5 goes right and bounces" --frames 17 \
	  --out $(DEMO_OUT)/video/clips
	$(BIN)/mmtok generate checkpoints/phenaki-moving-digits --text "the digit 2 moves right and bounces off the wall" \
	  --frames 33 --out $(DEMO_OUT)/video/long
	$(BIN)/mmtok generate checkpoints/phenaki-moving-digits --text "the digit 4 moves up and bounces off the wall" \
	  --text "the digit 4 moves left and bounces off the wall" --story --frames 17 --out $(DEMO_OUT)/video/story
	$(BIN)/mmtok generate checkpoints/phenaki-moving-digits --prime data/moving_digits/clips/clip00090.npz \
	  --text "5 goes up-right and bounces" --frames 17 --out $(DEMO_OUT)/video/continued
	$(BIN)/mmtok evaluate checkpoints/phenaki-moving-digits data/moving_digits --judge checkpoints/digit-classifier \
	  --max-items 40 --out $(DEMO_OUT)/video
	@echo "video demo (mp4, gif, png strips, metrics.md): $(abspath $(DEMO_OUT))/video"

clean-demo:
	rm -rf $(DEMO_OUT) $(DEMO_RUN)
