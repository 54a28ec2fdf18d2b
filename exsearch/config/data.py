"""params.yaml's `prepare` section: the question files and extra passage files it reads.

Their formats are the readers of `exsearch.data.datasets`; `config.Params` gathers this with the
other sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from exsearch.config.section import Section

DataFormat = Literal["hotpotqa", "ircot", "musique", "2wiki", "flashrag"]
CorpusFormat = Literal["flashrag", "title_text", "title_sentences", "dpr_tsv"]


class DatasetFile(Section):
    """One question file and how to read it."""

    path: str = Field(description="Path of the file, relative to the project root.")
    format: DataFormat = Field(description="Reader to use (see exsearch.data.datasets).")
    dataset: str = Field(description="Dataset name carried into every question and metric table.")
    skip: int = Field(
        default=0,
        ge=0,
        description="Leave out the first N valid questions (with `limit` on another entry of the "
        "same file, this splits one file between dev and train).",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Keep only the first N questions (after `skip`)."
    )
    skip_repeats: bool = Field(
        default=False,
        description="Drop (and count) questions whose id an earlier file of the same split "
        "already gave, instead of failing: for samples of one dataset taken from two sources.",
    )


class CorpusFile(Section):
    """An extra passage file added to the corpus next to the question contexts."""

    path: str
    format: CorpusFormat
    limit: int | None = Field(default=None, ge=1)
    url: str | None = Field(
        default=None,
        description="Where to download `path` from when it is missing (a .gz URL is "
        "decompressed), e.g. DPR's psgs_w100.tsv.gz.",
    )


class PrepareConfig(Section):
    """`prepare`: read the raw datasets into one question schema and build the passage corpus."""

    train: list[DatasetFile]
    dev: list[DatasetFile]
    corpus: list[CorpusFile] = Field(default_factory=list)
    contexts_in_corpus: bool = Field(
        default=True, description="Add every question's context paragraphs to the corpus."
    )
    skip_invalid: bool = Field(
        default=False, description="Skip (and count) invalid rows instead of failing on the first."
    )
