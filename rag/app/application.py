"""The application a surface serves: one :class:`rag.app.root.Components` (the composition root's collaborators) and
the services over it, built here and nowhere else.

>>> application = Application.build(Settings.load())            # instant: nothing loads yet
>>> for event in application.assistant.ask("年假有几天？"):
...     ...
>>> application.library.collections()
>>> application.page_views.page_image(doc_id, 1, [chunk_id], collections=["docs"])

The browser UI, ``rag ask``, ``rag serve`` and ``rag mcp`` each build one :class:`Application` and use its parts:
the assistant and the library share the components, so an upload is embedded by the model that embeds questions,
and one language model serves every surface of a process. (``root.py`` builds the collaborators; the services take
``Components``, so they are built here, above it, not in it.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.app.assistant import Assistant
from rag.app.library import DocumentLibrary
from rag.app.root import Components

if TYPE_CHECKING:
    from rag.app.access import AccessPolicy
    from rag.app.pages import PageViews
    from rag.settings import Settings


@dataclass(frozen=True)
class Application:
    """The services of one process over one set of components."""

    components: Components
    """The composition root's collaborators: stores, the embedder per model name, the language model, chains."""
    assistant: Assistant
    """The answer service (one admission: slots and a queue for every surface)."""
    library: DocumentLibrary
    """Collections, documents, uploads, ingest."""

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        llm: Any = None,
        use_llm: bool = True,
        slots: int | None = None,
        queue: int | None = None,
        folder_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> Application:
        """The application for ``settings``: ``llm`` a model to use instead of the settings' (tests, notebooks);
        ``use_llm`` false for search only; ``slots``/``queue`` the answers run at once and waiting (default: the
        model's slots, the settings' queue); ``folder_roots`` folders the library may re-ingest besides uploads."""
        return cls.over(
            Components(settings, llm=llm, use_llm=use_llm), slots=slots, queue=queue, folder_roots=folder_roots
        )

    @classmethod
    def over(
        cls,
        components: Components,
        *,
        slots: int | None = None,
        queue: int | None = None,
        folder_roots: Sequence[str | os.PathLike[str]] = (),
    ) -> Application:
        """The services over ``components`` already built (the HTTP app is handed them)."""
        return cls(
            components=components,
            assistant=Assistant(components, slots=slots, queue=queue),
            library=DocumentLibrary(components, folder_roots=folder_roots),
        )

    @property
    def settings(self) -> Settings:
        return self.components.settings

    @property
    def page_views(self) -> PageViews:
        """The cited pages as images and passages in context (one for the process)."""
        return self.components.page_views()

    @property
    def access_policy(self) -> AccessPolicy:
        """Which keys the servers accept and what each may read and write (one for the process)."""
        return self.components.access_policy()
