"""The run store: a run on disk. Its layout (every file name: `store.runlayout`), atomic writes
and safe reads (`store.runio`), its record run.json (`store.runrecord`), its training data
(`store.rundata`), checkpoints and training states with their verification (`store.checkpoint`,
`store.integrity`), its vocabulary (`store.vocab`), and `python -m store.generate`, a checkpoint
continuing a prompt. It sits above the network (`model/`): a checkpoint is read into a `model.GPT`.
Importing `store.runio`, `store.runlayout` or `store.runrecord` alone costs no torch.
"""
