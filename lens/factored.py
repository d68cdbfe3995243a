"""A low-rank matrix kept as two factors, M = A @ B (TransformerLens' FactoredMatrix, our own code).

    QK = FactoredMatrix(W_Q, W_K.transpose(-2, -1))   # (..., d_model, d_model) of rank d_head
    QK.norm(); QK.eigenvalues; U, S, V = QK.svd(); QK[1, 0]   # layer 1, head 0

A head's QK and OV circuits are d_model x d_model but of rank d_head: every question about them
(norm, singular values, eigenvalues) is answered from d_head x d_head matrices, never the product.
Leading dims (layer, head) broadcast between A and B and index like a tensor's.
"""

import torch

from lens.cache import LensError


def linalg_dtype(t: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (torch.linalg has no half-precision SVD or eig)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class FactoredMatrix:
    """M = A @ B with A (..., ldim, mdim) and B (..., mdim, rdim)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.dim() < 2 or B.dim() < 2 or A.size(-1) != B.size(-2):
            raise LensError(f"a FactoredMatrix needs A (..., l, m) and B (..., m, r); got {tuple(A.shape)} and "
                            f"{tuple(B.shape)}.")
        lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.expand(*lead, *A.shape[-2:])
        self.B = B.expand(*lead, *B.shape[-2:])
        self.ldim, self.mdim, self.rdim = A.size(-2), A.size(-1), B.size(-1)
        self.shape = torch.Size((*lead, self.ldim, self.rdim))
        self._svd = None

    @property
    def ndim(self) -> int:
        """Number of dims of the product."""
        return len(self.shape)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape {tuple(self.shape)}, inner dim {self.mdim})"

    @property
    def AB(self) -> torch.Tensor:
        """The product (..., ldim, rdim): the one costly operation."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """The reverse product (..., mdim, mdim); needs a square M."""
        if self.ldim != self.rdim:
            raise LensError(f"BA needs a square matrix; this one is {self.ldim} x {self.rdim}.")
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        """The transpose, B^T A^T."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B)."""
        return self.A, self.B

    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.dim() == 1:  # a vector: M v
            return (self.A @ (self.B @ other[:, None]))[..., 0]
        # keep the thinner factorisation: the inner dim is min(mdim, rdim)
        return FactoredMatrix(self.A, self.B @ other) if self.rdim > self.mdim else FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        if other.dim() == 1:  # v M
            return ((other[None, :] @ self.A) @ self.B)[..., 0, :]
        return FactoredMatrix(other @ self.A, self.B) if self.ldim > self.mdim else FactoredMatrix(other, self.AB)

    def __mul__(self, scalar) -> "FactoredMatrix":
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __getitem__(self, index) -> "FactoredMatrix":
        """Index the leading dims (e.g. M[layer, head]); rows and columns are not indexed here."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim - 2:
            raise LensError(f"index {index} reaches into the matrix itself; a FactoredMatrix of shape "
                            f"{tuple(self.shape)} is indexed by its {self.ndim - 2} leading dims (layer, head).")
        return FactoredMatrix(self.A[index], self.B[index])

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(U, S, V) with M = U diag(S) V^T, U (..., ldim, mdim), S (..., mdim), V (..., rdim, mdim).

        From thin QR decompositions A = Qa Ra and B^T = Qb Rb: M = Qa (Ra Rb^T) Qb^T, and only the
        middle mdim x mdim matrix needs an SVD."""
        if self._svd is None:
            Qa, Ra = torch.linalg.qr(linalg_dtype(self.A))
            Qb, Rb = torch.linalg.qr(linalg_dtype(self.B).transpose(-2, -1))
            Um, S, Vmh = torch.linalg.svd(Ra @ Rb.transpose(-2, -1))
            self._svd = (Qa @ Um, S, Qb @ Vmh.transpose(-2, -1))
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        return self.svd()[2]

    def norm(self) -> torch.Tensor:
        """Frobenius norm, (...): sqrt(trace((A^T A)(B B^T)))."""
        gram_a = self.A.transpose(-2, -1) @ self.A  # (..., m, m)
        gram_b = self.B @ self.B.transpose(-2, -1)
        return (gram_a * gram_b).sum((-2, -1)).clamp(min=0).sqrt()

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The mdim eigenvalues of BA (complex): AB's nonzero eigenvalues, and zeros beyond its rank."""
        return torch.linalg.eigvals(linalg_dtype(self.BA))

    def unsqueeze(self, dim: int) -> "FactoredMatrix":
        """A new leading dim at `dim` (counted among the leading dims)."""
        return FactoredMatrix(self.A.unsqueeze(dim), self.B.unsqueeze(dim))


def composition_scores(left: FactoredMatrix, right: FactoredMatrix) -> torch.Tensor:
    """||L R||_F / (||L||_F ||R||_F) for every pair of left and right leading indices: (*left lead, *right lead).

    From d_head x d_head Gram matrices: ||A1 B1 A2 B2||^2 = trace(M^T (A1^T A1) M (B2 B2^T)), M = B1 A2."""
    if left.rdim != right.ldim:
        raise LensError(f"composition needs left's columns to match right's rows; got {tuple(left.shape)} and "
                        f"{tuple(right.shape)}.")
    nl, nr = left.ndim - 2, right.ndim - 2
    A1, B1 = (t.reshape(*t.shape[:nl], *([1] * nr), *t.shape[-2:]).double() for t in left.pair)
    A2, B2 = (t.reshape(*([1] * nl), *t.shape).double() for t in right.pair)
    middle = B1 @ A2  # (..., m1, m2)
    gram_a = A1.transpose(-2, -1) @ A1  # (..., m1, m1)
    gram_b = B2 @ B2.transpose(-2, -1)  # (..., m2, m2)
    product = ((gram_a @ middle) * (middle @ gram_b)).sum((-2, -1))
    left_norm = FactoredMatrix(left.A.double(), left.B.double()).norm()[(...,) + (None,) * nr]
    right_norm = FactoredMatrix(right.A.double(), right.B.double()).norm()
    scores = product.clamp(min=0).sqrt() / (left_norm * right_norm)
    return scores.to(left.A.dtype)
