"""Independent float64 NumPy implementations of the estimators (DESIGN.md §2)."""
import numpy as np


def gram(x, kernel="linear", sigma=0.5):
    """Gram of the feature-centred samples. Centring changes no HSIC/CKA (HSIC_0 and
    HSIC_1 ignore terms a 1^T + 1 b^T, RBF distances ignore shifts) but keeps the
    float64 oracle exact: an uncentred Gram with a large offset fed to the HSIC_1
    formula below cancels away ~1e-8."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x = x - x.mean(0, keepdims=True)
    g = x @ x.T
    if kernel == "linear":
        return g
    return gram_rbf(x, sigma)


def gram_rbf(x, threshold=1.0):
    """The published formula (Kornblith et al. 2019, CKA notebook): median of all n^2
    squared distances, diagonal zeros included, np.median's mean of the middle two."""
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def hsic(k, l, unbiased=False):
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return np.sum((h @ k @ h) * (h @ l @ h)) / (n - 1) ** 2
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def center(k, unbiased=False):
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return h @ k @ h
    kt = k.copy()
    np.fill_diagonal(kt, 0)
    r = kt.sum(1)
    u = kt - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0)
    return u


def cka_matrix(feats, kernel="linear", unbiased=False, sigma=0.5):
    gs = [gram(f, kernel, sigma) for f in feats]
    h = np.array([[hsic(a, b, unbiased) for b in gs] for a in gs])
    d = np.diag(h)
    return h / np.sqrt(np.outer(d, d))
