"""The bottom layer: config, records, chat types and the one reader and writer of shards.

It imports nothing else of fspo_data; every other package may import it.
"""
