!> Batch normalization at inference: y = gamma (x - moving_mean) / sqrt(moving_variance + eps)
!> + beta, folded at load into y = x s + t. Epsilon, center and scale come from the file.
module colnn_batchnorm
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  implicit none
  private

  public :: batchnorm_t

  type, extends(layer_t) :: batchnorm_t
    real(wp) :: epsilon = 0
    real(wp) :: momentum = 0
    logical :: center = .true., scale = .true.
    real(wp), allocatable :: gamma(:), beta(:), moving_mean(:), moving_variance(:)
    real(wp), allocatable :: s(:), t(:)
  contains
    procedure :: init => batchnorm_init
    procedure :: forward => batchnorm_forward
    procedure :: describe => batchnorm_describe
    procedure :: type_name => batchnorm_type_name
    procedure :: is_elementwise => batchnorm_is_elementwise
    procedure :: apply_inplace => batchnorm_apply_inplace
    procedure :: num_params => batchnorm_num_params
  end type batchnorm_t

contains

  function batchnorm_type_name(self) result(name)
    class(batchnorm_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'batch_normalization'
  end function batchnorm_type_name

  subroutine batchnorm_init(self, spec, n_in, stat, errmsg)
    class(batchnorm_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    real(dp), allocatable :: inv(:)
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('epsilon', self%epsilon, stat, errmsg); if (stat /= 0) return
    if (self%epsilon < 0) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': epsilon must be >= 0'
      return
    end if
    call spec%get_real('momentum', self%momentum, stat, errmsg, default=0.99_wp)
    if (stat /= 0) return
    call spec%get_logical('center', self%center, stat, errmsg); if (stat /= 0) return
    call spec%get_logical('scale', self%scale, stat, errmsg); if (stat /= 0) return
    if (self%scale) then
      call spec%get_vector('gamma', n_in, self%gamma, stat, errmsg); if (stat /= 0) return
    end if
    if (self%center) then
      call spec%get_vector('beta', n_in, self%beta, stat, errmsg); if (stat /= 0) return
    end if
    call spec%get_vector('moving_mean', n_in, self%moving_mean, stat, errmsg)
    if (stat /= 0) return
    call spec%get_vector('moving_variance', n_in, self%moving_variance, stat, errmsg)
    if (stat /= 0) return
    if (any(self%moving_variance + self%epsilon <= 0)) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': moving_variance + epsilon must be > 0'
      return
    end if
    call spec%check_all_used(stat, errmsg); if (stat /= 0) return

    inv = 1 / sqrt(real(self%moving_variance, dp) + real(self%epsilon, dp))
    if (self%scale) inv = inv * self%gamma
    self%s = real(inv, wp)
    self%t = real(-self%moving_mean * inv, wp)
    if (self%center) self%t = self%t + self%beta
  end subroutine batchnorm_init

  subroutine batchnorm_describe(self, spec)
    class(batchnorm_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('epsilon', self%epsilon)
    call spec%set_real('momentum', self%momentum)
    call spec%set_logical('center', self%center)
    call spec%set_logical('scale', self%scale)
    if (self%scale) call spec%set_tensor_1d('gamma', self%gamma)
    if (self%center) call spec%set_tensor_1d('beta', self%beta)
    call spec%set_tensor_1d('moving_mean', self%moving_mean)
    call spec%set_tensor_1d('moving_variance', self%moving_variance)
  end subroutine batchnorm_describe

  pure logical function batchnorm_is_elementwise(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_is_elementwise = .true.
  end function batchnorm_is_elementwise

  subroutine batchnorm_apply_inplace(self, nc, a)
    class(batchnorm_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
    integer :: j
    do j = 1, nc
      a(:, j) = a(:, j) * self%s + self%t
    end do
  end subroutine batchnorm_apply_inplace

  subroutine batchnorm_forward(self, nc, x, y)
    class(batchnorm_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
    call self%apply_inplace(nc, y)
  end subroutine batchnorm_forward

  pure integer(i8) function batchnorm_num_params(self)
    class(batchnorm_t), intent(in) :: self
    batchnorm_num_params = 2 * int(self%n_in, i8)
    if (self%scale) batchnorm_num_params = batchnorm_num_params + self%n_in
    if (self%center) batchnorm_num_params = batchnorm_num_params + self%n_in
  end function batchnorm_num_params
end module colnn_batchnorm
