"""Re-rankers: the pass-through baseline and the rule-and-diversity re-ranker (SPEC section 5)."""
from rerank.reranker import RerankResult, RuleDiversityReRanker

__all__ = ["RerankResult", "RuleDiversityReRanker"]
