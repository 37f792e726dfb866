"""Every table, imported in one place for Alembic and the tests."""

from notify_server.accounts.models import Account, ApiKey
from notify_server.bindings.models import Binding, BindingTag
from notify_server.credentials.models import Credential
from notify_server.db import Base
from notify_server.deployment import Deployment
from notify_server.importer import ImportProgress
from notify_server.notifications.models import Delivery, Expansion, Notification
from notify_server.services.models import Service

__all__ = [
    "Account",
    "ApiKey",
    "Base",
    "Binding",
    "BindingTag",
    "Credential",
    "Delivery",
    "Deployment",
    "Expansion",
    "ImportProgress",
    "Notification",
    "Service",
]
