"""Typed keys for the resources the hub's aiohttp application holds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from edgekit.mqtt import MqttSession

from .broker_access import BrokerAccess
from .broker_revocations import BrokerRevocations
from .components import Components
from .dispatch import Dispatcher
from .enrollment import Enrollment
from .identity import HubIdentity
from .metrics import HubMetrics
from .renderer import Renderer
from .rollout_driver import RolloutDriver
from .settings import HubSettings
from .store import HubStores
from .store.assignments import AssignmentStore
from .store.components import ComponentStore
from .store.enrollment import EnrollmentStore
from .store.reports import ReportStore
from .summaries import SummaryPublisher

if TYPE_CHECKING:
    from .certificates import CertificateKeeper

SETTINGS = web.AppKey("settings", HubSettings)
# The part stores, each for the handlers that use it; the whole (``STORES``) is for the app's wiring alone.
STORES = web.AppKey("stores", HubStores)
ENROLLMENT_STORE = web.AppKey("enrollment_store", EnrollmentStore)
REPORT_STORE = web.AppKey("report_store", ReportStore)
COMPONENT_STORE = web.AppKey("component_store", ComponentStore)
ASSIGNMENT_STORE = web.AppKey("assignment_store", AssignmentStore)
IDENTITY = web.AppKey("identity", HubIdentity)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
MQTT = web.AppKey("mqtt", MqttSession)
COMPONENTS = web.AppKey("components", Components)
ENROLLMENT = web.AppKey("enrollment", Enrollment)
RENDERER = web.AppKey("renderer", Renderer)
BROKER_ACCESS = web.AppKey("broker_access", BrokerAccess)
REVOCATIONS = web.AppKey("revocations", BrokerRevocations)
SUMMARIES = web.AppKey("summaries", SummaryPublisher)
METRICS = web.AppKey("metrics", HubMetrics)
ROLLOUTS = web.AppKey("rollouts", RolloutDriver)
# Typed by annotation only: the keeper's module imports edgehub.tls, which imports this one.
CERTIFICATES: web.AppKey[CertificateKeeper] = web.AppKey("certificates")
