"""Tasks: everything modality-specific about using a generator.

A task turns a user's request (sentences and a voice, class labels, captions) into the conditions
and lengths of :meth:`mmtok.generators.TokenGenerator.generate`, and the generated tokens into
files (wav and spectrogram png, png and a grid). A generator's config records its task
(``{"class_path": "mmtok.tasks....", "init_args": {...}}``) and ``mmtok generate`` dispatches on it;
generators, samplers and training modules never look inside.

- :class:`~mmtok.tasks.tts.TextToSpeech`: text (phonemized by espeak-ng), a speaker or a voice prompt.
- :class:`~mmtok.tasks.images.ClassToImage`: class labels -> images.
- :class:`~mmtok.tasks.images.CaptionToImage`: captions -> images.
"""

from mmtok.tasks.base import Task, build_task

__all__ = ["Task", "build_task"]
