"""A local Event Grid system topic on a storage container: BlobCreated events to a webhook, at least once."""

from .publisher import EventGridPublisher, Subscription

__all__ = ["EventGridPublisher", "Subscription"]
