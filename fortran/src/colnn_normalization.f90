!> Keras `Normalization`: y = (x - mean) / max(sqrt(variance), eps), or the inverse.
module colnn_normalization
  use colnn_kinds, only: wp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  implicit none
  private

  public :: normalization_t

  type, extends(layer_t) :: normalization_t
    real(wp) :: epsilon = 0
    logical :: invert = .false.
    real(wp), allocatable :: mean(:), variance(:), sd(:)
  contains
    procedure :: init => normalization_init
    procedure :: forward => normalization_forward
    procedure :: describe => normalization_describe
    procedure :: type_name => normalization_type_name
    procedure :: is_elementwise => normalization_is_elementwise
    procedure :: apply_inplace => normalization_apply_inplace
    procedure :: num_params => normalization_num_params
    procedure :: backward => normalization_backward
    procedure :: input_scale => normalization_input_scale
  end type normalization_t

contains

  function normalization_type_name(self) result(name)
    class(normalization_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'normalization'
  end function normalization_type_name

  subroutine normalization_init(self, spec, n_in, stat, errmsg)
    class(normalization_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('epsilon', self%epsilon, stat, errmsg); if (stat /= 0) return
    if (self%epsilon < 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': epsilon must be >= 0'
      return
    end if
    call spec%get_logical('invert', self%invert, stat, errmsg); if (stat /= 0) return
    call spec%get_vector('mean', n_in, self%mean, stat, errmsg); if (stat /= 0) return
    call spec%get_vector('variance', n_in, self%variance, stat, errmsg); if (stat /= 0) return
    if (any(self%variance < 0)) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': variance has negative entries'
      return
    end if
    call spec%check_all_used(stat, errmsg); if (stat /= 0) return
    self%sd = max(sqrt(self%variance), self%epsilon)
  end subroutine normalization_init

  subroutine normalization_describe(self, spec)
    class(normalization_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('epsilon', self%epsilon)
    call spec%set_logical('invert', self%invert)
    call spec%set_tensor_1d('mean', self%mean)
    call spec%set_tensor_1d('variance', self%variance)
  end subroutine normalization_describe

  pure logical function normalization_is_elementwise(self)
    class(normalization_t), intent(in) :: self
    normalization_is_elementwise = .true.
  end function normalization_is_elementwise

  subroutine normalization_apply_inplace(self, nc, a)
    class(normalization_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
    integer :: j
    if (self%invert) then
      do j = 1, nc
        a(:, j) = self%mean + a(:, j) * self%sd
      end do
    else
      do j = 1, nc
        a(:, j) = (a(:, j) - self%mean) / self%sd
      end do
    end if
  end subroutine normalization_apply_inplace

  subroutine normalization_forward(self, nc, x, y)
    class(normalization_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
    call self%apply_inplace(nc, y)
  end subroutine normalization_forward

  pure integer(i8) function normalization_num_params(self)
    class(normalization_t), intent(in) :: self
    normalization_num_params = 2 * int(self%n_in, i8)
  end function normalization_num_params

  subroutine normalization_backward(self, nc, x, y, dy, dx, stat, errmsg)
    class(normalization_t), intent(inout) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(in) :: y(self%n_out, nc)
    real(wp), intent(in) :: dy(self%n_out, nc)
    real(wp), intent(out) :: dx(self%n_in, nc)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer :: j
    stat = COLNN_OK
    errmsg = ''
    do j = 1, nc
      if (self%invert) then
        dx(:, j) = dy(:, j) * self%sd
      else
        dx(:, j) = dy(:, j) / self%sd
      end if
    end do
  end subroutine normalization_backward

  !> The standard deviations the inputs are divided by; an inverting layer (which multiplies)
  !> does not normalize its inputs.
  subroutine normalization_input_scale(self, scale, stat)
    class(normalization_t), intent(in) :: self
    real(wp), allocatable, intent(out) :: scale(:)
    integer, intent(out) :: stat
    stat = COLNN_ERR_UNSUPPORTED
    if (self%invert) return
    scale = self%sd
    stat = COLNN_OK
  end subroutine normalization_input_scale
end module colnn_normalization
