"""Three fast, diverse scikit-learn base models for text.

- `tfidf_lr`       word n-gram TF-IDF + logistic regression (`tfidf`).
- `tfidf_char_svm` character n-gram TF-IDF (within word boundaries) + linear SVM with sigmoid-calibrated
                   probabilities (`tfidf`).
- `nb_svm`         NB-SVM (Wang & Manning 2012), the "NBSVM-LR" variant: binarized word uni+bigrams scaled
                   by their naive-Bayes log-count ratios, then logistic regression; one-vs-rest for more
                   than two classes (`nb_svm`).

They share `text_model.SklearnTextModel`: input checks, expanding probabilities to every class code
0..n_classes-1 (a fold's training rows may lack a rare class; its column is then 0) and saving without
pickle (`saving`, on `foldstack.models.persist`). Importing this package registers the three kinds.
"""

from foldstack.models.sklearn.nb_svm import NBSVM
from foldstack.models.sklearn.tfidf import TfidfCharSVM, TfidfLogisticRegression

__all__ = ["NBSVM", "TfidfCharSVM", "TfidfLogisticRegression"]
