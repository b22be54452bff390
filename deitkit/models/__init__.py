"""Student and teacher factories."""
from .student import (DEIT_NAMES, StudentOutput, create_student, has_dist_token, student_forward,
                      tune_attention)
from .teacher import Teacher, create_cnn, create_teacher, init_cnn

__all__ = ["DEIT_NAMES", "StudentOutput", "create_student", "has_dist_token", "student_forward",
           "Teacher", "create_teacher", "create_cnn", "init_cnn", "tune_attention"]
