"""The reference SDK's exception names (its ``wallaroo.object`` module), on Taskbus's errors.

A notebook's ``from wallaroo.object import EntityNotFoundError`` ports as
``from sdk.object import EntityNotFoundError`` (inside a task, ``wallaroo.object`` is this
module). Every name is a ``TaskbusError``:

==============================  ==============================================================
reference name                  in Taskbus
==============================  ==============================================================
``EntityNotFoundError``         ``NotFound``: the base of ``TaskNotFound``,
                                ``OrchestrationNotFound`` and every other ``…NotFound``
``CommunicationError``          ``CommunicationFailed``: the base of ``NotConnected`` and
                                ``RequestTimeout``
``InvalidNameError``            ``InvalidName`` (also a ``ValueError``)
``RequiredAttributeMissing``    defined here, never raised: Taskbus skips (and logs) a record
``ModelConversionError``        that does not decode; it has no models, deployments or
``ModelConversionTimeoutError`` licence limits. They exist so that ``except`` clauses written
``DeploymentError``             for the reference still import.
``LimitError``
``UserLimitError``
==============================  ==============================================================
"""

from __future__ import annotations

from broker.errors import CommunicationFailed, InvalidName, NotFound, TaskbusError

EntityNotFoundError = NotFound
CommunicationError = CommunicationFailed
InvalidNameError = InvalidName


class RequiredAttributeMissing(TaskbusError):
    """The reference's: an API object lacked a required attribute. Never raised by Taskbus."""


class ModelConversionError(TaskbusError):
    """The reference's: a model failed to convert. Never raised by Taskbus (it has no models)."""


class ModelConversionTimeoutError(TaskbusError):
    """The reference's: a model conversion took too long. Never raised by Taskbus."""


class DeploymentError(TaskbusError):
    """The reference's: a model pipeline failed to deploy. Never raised by Taskbus (a run_*
    that cannot create its task raises ``OrchestrationDeployOneshotFailed``)."""


class LimitError(TaskbusError):
    """The reference's: a licence limit was reached. Never raised by Taskbus."""


class UserLimitError(TaskbusError):
    """The reference's: a community licence's user limit was reached. Never raised by
    Taskbus."""


__all__ = [
    "CommunicationError",
    "DeploymentError",
    "EntityNotFoundError",
    "InvalidNameError",
    "LimitError",
    "ModelConversionError",
    "ModelConversionTimeoutError",
    "RequiredAttributeMissing",
    "UserLimitError",
]
