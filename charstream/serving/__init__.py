"""The serving stage: many clients on one batched native step. No TensorFlow.

`request` (the one check of a request), `scheduler` (decisions: admit, park,
finish), `slots` (the batch's memory and the tick: the executor), `engine` (the
thin asyncio loop around them) and `app` (the HTTP routes, errors and metrics,
on Starlette). `python -m charstream.serve` is the command line.
"""
