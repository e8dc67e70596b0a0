# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("num_items", "max_history", "max_n", "model_version", "max_batch", "max_position_ids")
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_N_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_IDS_FIELD_NUMBER: _ClassVar[int]
    num_items: int
    max_history: int
    max_n: int
    model_version: str
    max_batch: int
    max_position_ids: int
    def __init__(self, num_items: _Optional[int] = ..., max_history: _Optional[int] = ..., max_n: _Optional[int] = ..., model_version: _Optional[str] = ..., max_batch: _Optional[int] = ..., max_position_ids: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("history", "n", "request_id")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedScalarFieldContainer[int]
    n: int
    request_id: str
    def __init__(self, history: _Optional[_Iterable[int]] = ..., n: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecommendReply(_message.Message):
    __slots__ = ("items", "scores", "num_items", "model_version", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    num_items: int
    model_version: str
    request_id: str
    def __init__(self, items: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., num_items: _Optional[int] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class History(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, items: _Optional[_Iterable[int]] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("histories", "n", "request_id")
    HISTORIES_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    histories: _containers.RepeatedCompositeFieldContainer[History]
    n: int
    request_id: str
    def __init__(self, histories: _Optional[_Iterable[_Union[History, _Mapping]]] = ..., n: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecommendBatchReply(_message.Message):
    __slots__ = ("replies", "request_id")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[RecommendReply]
    request_id: str
    def __init__(self, replies: _Optional[_Iterable[_Union[RecommendReply, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecommendForUsersRequest(_message.Message):
    __slots__ = ("user_ids", "n", "request_id")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    n: int
    request_id: str
    def __init__(self, user_ids: _Optional[_Iterable[int]] = ..., n: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class PositionCandidatesForUsersRequest(_message.Message):
    __slots__ = ("user_ids", "k", "request_id", "with_scores")
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WITH_SCORES_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[int]
    k: int
    request_id: str
    with_scores: bool
    def __init__(self, user_ids: _Optional[_Iterable[int]] = ..., k: _Optional[int] = ..., request_id: _Optional[str] = ..., with_scores: _Optional[bool] = ...) -> None: ...

class UserPositionCandidates(_message.Message):
    __slots__ = ("user_id", "positions", "items", "scores")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    positions: int
    items: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, user_id: _Optional[int] = ..., positions: _Optional[int] = ..., items: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ...) -> None: ...

class PositionCandidatesForUsersReply(_message.Message):
    __slots__ = ("users", "k", "model_version", "request_id")
    USERS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[UserPositionCandidates]
    k: int
    model_version: str
    request_id: str
    def __init__(self, users: _Optional[_Iterable[_Union[UserPositionCandidates, _Mapping]]] = ..., k: _Optional[int] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodMetrics(_message.Message):
    __slots__ = ("method", "codes", "latency_counts", "latency_sum_seconds")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    method: str
    codes: _containers.ScalarMap[str, int]
    latency_counts: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_seconds: float
    def __init__(self, method: _Optional[str] = ..., codes: _Optional[_Mapping[str, int]] = ..., latency_counts: _Optional[_Iterable[int]] = ..., latency_sum_seconds: _Optional[float] = ...) -> None: ...

class MetricsReply(_message.Message):
    __slots__ = ("latency_bounds_seconds", "methods", "batches", "batched_requests", "batched_rows", "expired", "uptime_seconds")
    LATENCY_BOUNDS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCHED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_ROWS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    latency_bounds_seconds: _containers.RepeatedScalarFieldContainer[float]
    methods: _containers.RepeatedCompositeFieldContainer[MethodMetrics]
    batches: int
    batched_requests: int
    batched_rows: int
    expired: int
    uptime_seconds: float
    def __init__(self, latency_bounds_seconds: _Optional[_Iterable[float]] = ..., methods: _Optional[_Iterable[_Union[MethodMetrics, _Mapping]]] = ..., batches: _Optional[int] = ..., batched_requests: _Optional[int] = ..., batched_rows: _Optional[int] = ..., expired: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...
